"""T3's logits chains as vLLM logits processors: CFG mixing and T3's repetition penalty (Llama T3), and Turbo's
whole chain (GPT-2 T3).

The model returns `[cond | uncond]` logits per request (see `model.py`). This processor runs where vLLM runs its
non-argmax-invariant processors: before vLLM's own penalties, temperature, min-p and top-p, and before greedy
argmax. So the order is the reference's: CFG -> repetition penalty -> temperature -> min-p -> top-p.

The repetition penalty is applied here rather than by vLLM because the reference penalises the start-of-speech
token plus the generated tokens, while vLLM's covers the prompt ids too (which are placeholders for a prompt of
embeddings). Requests set vLLM's own `repetition_penalty` to 1.

Nothing here may wait for the GPU: `apply` runs while the step's forward pass is still queued, and a blocking
host-to-device copy (a pageable `.to(device)`) would stall the CPU until it finishes, serialising vLLM's
scheduling of the next step behind it. Per-step inputs (the new tokens' indices) go through a ring of pinned
buffers with non-blocking copies; per-request settings live on the device and change only with the batch.

Turbo and Nano (`TurboLogitsProcessor`) follow `T3.inference_turbo`: / temperature -> top-k -> top-p -> repetition
penalty, the penalty over the start-of-speech token at the first step and over the generated tokens alone after.
The penalty comes after the filters, so vLLM's sampler cannot do any of it: requests hand the processor their
settings and ask vLLM for plain sampling (temperature 1, or 0 for greedy; no top-k/top-p).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

if TYPE_CHECKING:
    from vllm.config import VllmConfig

from ..sampling import apply_top_k, apply_top_p
from .plugin import CFG_WEIGHT, REPETITION_PENALTY, TEMPERATURE, TOP_K, TOP_P

log = logging.getLogger(__name__)


def _check_number(args: dict, key: str, low: float, *, strict: bool = False, integer: bool = False) -> None:
    value = args.get(key)
    if value is None:
        raise ValueError(f"T3 requests need extra_args[{key!r}]")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"extra_args[{key!r}] must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"extra_args[{key!r}] must be an integer, got {value!r}")
    if value < low or (strict and value == low):
        raise ValueError(f"extra_args[{key!r}] is out of range: {value!r}")


class _IndexUpload:
    """Small lists of int64 indices to the device without allocating pinned memory or waiting for the GPU: a ring
    of pinned host buffers and their device twins. A host buffer is written again only after its last copy has run
    (an event per buffer; with a ring of 4 the GPU would have to lag 4 steps behind for that to wait). The device
    twin needs no such guard: every use of it is queued on the same stream before its next copy."""

    RING = 4

    def __init__(self, device: torch.device, capacity: int, pin: bool) -> None:
        self.device = device
        self.pin = pin
        self.capacity = capacity
        self.next = 0
        if pin:
            try:
                self.host = [torch.empty(capacity, dtype=torch.long, pin_memory=True) for _ in range(self.RING)]
                self.host_np = [buffer.numpy() for buffer in self.host]
                self.twin = [torch.empty(capacity, dtype=torch.long, device=device) for _ in range(self.RING)]
                self.copied: list[torch.cuda.Event | None] = [None] * self.RING
            except RuntimeError as exc:  # no pinned memory here: plain copies, which wait for the GPU
                log.warning("T3 logits processor: pinned buffers unavailable (%s); per-step uploads will block", exc)
                self.pin = False

    def __call__(self, values: list[int]) -> torch.Tensor:
        if not self.pin:
            return torch.tensor(values, dtype=torch.long, device=self.device)
        count = len(values)
        if count > self.capacity:  # more than the ring holds (a burst of tokens): a one-off pinned copy
            return torch.tensor(values, dtype=torch.long).pin_memory().to(self.device, non_blocking=True)
        slot, self.next = self.next, (self.next + 1) % self.RING
        event = self.copied[slot]
        if event is not None:
            event.synchronize()
        self.host_np[slot][:count] = values
        twin = self.twin[slot][:count]
        twin.copy_(self.host[slot][:count], non_blocking=True)
        if event is None:
            event = self.copied[slot] = torch.cuda.Event()
        event.record()
        return twin


class _T3LogitsProcessor(LogitsProcessor):
    """What both chains share: per-request settings and the mask of tokens the repetition penalty touches, both
    kept on the device by batch slot.

    Host work per step is bounded: settings change only in `update_state` (one upload per batch change), and
    `apply` reads each live request's newest ids from vLLM's lists (the only place vLLM hands them to a logits
    processor), uploads them as one index list and marks them with one scatter. Everything else is whole-batch
    tensor ops that never wait for the GPU."""

    # Turbo's penalty forgets the start-of-speech token once a token has been generated.
    start_token_only_first: bool = False

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        hf_config = vllm_config.model_config.hf_config
        t3 = dict(hf_config.chatterbox_t3)
        self.vocab = int(t3["speech_tokens_dict_size"])
        self.start_token = int(t3["start_speech_token"])
        self.device = device
        slots = vllm_config.scheduler_config.max_num_seqs
        self.penalised = torch.zeros((slots, self.vocab), dtype=torch.bool, device=device)
        # [slots, settings] float32 (vLLM's sampler hands processors float32 logits); free slots hold stale values
        # that nobody samples from.
        self.settings = torch.tensor([self._defaults()], dtype=torch.float32).repeat(slots, 1).to(device)  # at start
        self.histories: list[list[int] | None] = [None] * slots  # vLLM's live list of each slot's generated ids
        self.seen = [0] * slots  # how many of them are in the penalty mask already
        self.live: set[int] = set()
        self.upload = _IndexUpload(device, 4 * slots, is_pin_memory and device.type == "cuda")

    def _settings(self, params: SamplingParams) -> tuple[float, ...]:
        raise NotImplementedError

    def _defaults(self) -> tuple[float, ...]:
        """Settings of a batch slot before its first request."""
        raise NotImplementedError

    def is_argmax_invariant(self) -> bool:
        return False  # CFG and the penalty move the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # In the order BatchUpdate documents: removed, added (which may reuse a removed slot), moved.
        for index in batch_update.removed:
            self.histories[index] = None
            self.live.discard(index)
        if batch_update.added:
            self._add(batch_update.added)
        if batch_update.moved:
            self._move(batch_update.moved)

    def _add(self, added: Any) -> None:
        indices, values = [], []
        for index, params, _prompt_ids, output_ids in added:
            self.histories[index] = output_ids
            self.seen[index] = 0
            self.live.add(index)
            indices.append(index)
            values.append(self._settings(params))
        rows = self._to_device(torch.tensor(indices, dtype=torch.long))
        self.settings.index_copy_(0, rows, self._to_device(torch.tensor(values, dtype=torch.float32)))
        self.penalised.index_fill_(0, rows, False)
        self.penalised[:, self.start_token].index_fill_(0, rows, True)  # the reference's history starts with it

    def _move(self, moved: Any) -> None:
        """Apply vLLM's moves (a -> b, or a <-> b, in order) to the host lists, then to the device rows with one
        gather per tensor."""
        holder: list[int | None] = list(range(len(self.histories)))  # whose state each slot holds after the moves
        for a, b, direction in moved:
            if direction == MoveDirectionality.SWAP:
                holder[a], holder[b] = holder[b], holder[a]
            else:
                holder[a], holder[b] = None, holder[a]
        histories, seen = list(self.histories), list(self.seen)
        targets, origins = [], []
        for slot, origin in enumerate(holder):
            if origin is None:
                self.histories[slot] = None
            elif origin != slot:
                self.histories[slot], self.seen[slot] = histories[origin], seen[origin]
                targets.append(slot)
                origins.append(origin)
        self.live = {slot for slot, history in enumerate(self.histories) if history is not None}
        if targets:
            to_rows, from_rows = self._to_device(torch.tensor(targets)), self._to_device(torch.tensor(origins))
            self.penalised[to_rows] = self.penalised[from_rows]
            self.settings[to_rows] = self.settings[from_rows]

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device without waiting for the GPU (pinned, non-blocking; the caching host
        allocator keeps the pinned block alive until the copy has run). For batch changes, not every step."""
        if self.upload.pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _mark_new_tokens(self) -> None:
        flat: list[int] = []
        forget: list[int] = []
        vocab, last = self.vocab, self.vocab - 1
        for index in self.live:
            seen = self.seen[index]
            new = self.histories[index][seen:]  # type: ignore[index]  # live slots hold a list
            if not new:
                continue
            if seen == 0 and self.start_token_only_first:
                forget.append(index * vocab + self.start_token)
            base = index * vocab
            for token in new:
                if token < 0:  # a placeholder for a token still in flight (async scheduling)
                    break
                flat.append(base + (token if token < vocab else last))
                seen += 1
            self.seen[index] = seen
        if forget:  # before the new tokens: a generated start token stays penalised
            self.penalised.view(-1).index_fill_(0, self.upload(forget), False)
        if flat:
            self.penalised.view(-1).index_fill_(0, self.upload(flat), True)

    def _penalise(self, logits: torch.Tensor, penalties: torch.Tensor, batch: int, out: torch.Tensor | None = None):
        penalised = torch.where(logits < 0, logits * penalties, logits / penalties)
        if out is None:
            return torch.where(self.penalised[:batch], penalised, logits)
        return torch.where(self.penalised[:batch], penalised, logits, out=out)


class CFGLogitsProcessor(_T3LogitsProcessor):
    """Llama T3: `[cond | uncond]` logits -> CFG mix -> repetition penalty; vLLM then applies temperature, min-p
    and top-p. The second half is set to -inf so the sampler never picks it."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        args = sampling_params.extra_args or {}
        _check_number(args, CFG_WEIGHT, 0.0)
        _check_number(args, REPETITION_PENALTY, 0.0, strict=True)

    def _settings(self, params: SamplingParams) -> tuple[float, ...]:
        args = params.extra_args or {}
        return float(args.get(CFG_WEIGHT, 0.0)), float(args.get(REPETITION_PENALTY, 1.0))

    def _defaults(self) -> tuple[float, ...]:
        return 0.0, 1.0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """In place: the mixed, penalised logits overwrite the conditional half, the other half becomes -inf."""
        batch = logits.shape[0]
        self._mark_new_tokens()
        settings = self.settings[:batch].to(logits.dtype)  # a no-op for vLLM's float32 logits
        weights, penalties = settings[:, 0:1], settings[:, 1:2]
        cond, uncond = logits[:, : self.vocab], logits[:, self.vocab :]
        mixed = cond + weights * (cond - uncond)
        self._penalise(mixed, penalties, batch, out=cond)
        uncond.fill_(float("-inf"))
        return logits


class TurboLogitsProcessor(_T3LogitsProcessor):
    """GPT-2 T3: / temperature -> top-k -> top-p -> repetition penalty, each with the request's own settings."""

    start_token_only_first = True

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        args = sampling_params.extra_args or {}
        _check_number(args, TEMPERATURE, 0.0)
        _check_number(args, TOP_K, 0.0, integer=True)
        _check_number(args, TOP_P, 0.0, strict=True)
        if args[TOP_P] > 1:
            raise ValueError(f"extra_args[{TOP_P!r}] is out of range: {args[TOP_P]!r}")
        _check_number(args, REPETITION_PENALTY, 0.0, strict=True)

    def _settings(self, params: SamplingParams) -> tuple[float, ...]:
        args = params.extra_args or {}
        temperature = float(args.get(TEMPERATURE, 1.0))
        return (
            temperature if temperature > 0 else 1.0,  # greedy: vLLM takes the argmax, which / T would not move
            float(args.get(TOP_K, 0)),
            float(args.get(TOP_P, 1.0)),
            float(args.get(REPETITION_PENALTY, 1.0)),
        )

    def _defaults(self) -> tuple[float, ...]:
        return 1.0, 0.0, 1.0, 1.0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        batch = logits.shape[0]
        self._mark_new_tokens()
        settings = self.settings[:batch]
        logits = logits / settings[:, 0:1].to(logits.dtype)
        logits = apply_top_k(logits, settings[:, 1])
        logits = apply_top_p(logits, settings[:, 2:3])
        return self._penalise(logits, settings[:, 3:4].to(logits.dtype), batch)
