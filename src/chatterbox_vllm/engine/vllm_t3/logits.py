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
scheduling of the next step behind it. Per-step inputs go through pinned memory with non-blocking copies.

Turbo and Nano (`TurboLogitsProcessor`) follow `T3.inference_turbo`: / temperature -> top-k -> top-p -> repetition
penalty, the penalty over the start-of-speech token at the first step and over the generated tokens alone after.
The penalty comes after the filters, so vLLM's sampler cannot do any of it: requests hand the processor their
settings and ask vLLM for plain sampling (temperature 1, or 0 for greedy; no top-k/top-p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

if TYPE_CHECKING:
    from vllm.config import VllmConfig

from ..sampling import apply_top_k, apply_top_p
from .plugin import CFG_WEIGHT, REPETITION_PENALTY, TEMPERATURE, TOP_K, TOP_P


@dataclass
class _Row:
    settings: tuple[float, ...]  # the processor's per-request numbers (see `_settings`)
    output_ids: list[int]  # vLLM's live list of this request's generated ids
    seen: int = 0  # how many of them are already in the penalty mask


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


class _T3LogitsProcessor(LogitsProcessor):
    """What both chains share: per-request settings by batch slot, and the mask of tokens the repetition penalty
    touches, kept on the device and grown by each step's new tokens."""

    # Turbo's penalty forgets the start-of-speech token once a token has been generated.
    start_token_only_first: bool = False

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        hf_config = vllm_config.model_config.hf_config
        t3 = dict(hf_config.chatterbox_t3)
        self.vocab = int(t3["speech_tokens_dict_size"])
        self.start_token = int(t3["start_speech_token"])
        self.device = device
        self.rows: dict[int, _Row] = {}
        slots = vllm_config.scheduler_config.max_num_seqs
        self.penalised = torch.zeros((slots, self.vocab), dtype=torch.bool, device=device)
        self.columns: torch.Tensor | None = None  # [batch, settings] per-row settings, rebuilt on changes
        self.pin = is_pin_memory and device.type == "cuda"

    def _settings(self, params: SamplingParams) -> tuple[float, ...]:
        raise NotImplementedError

    def _defaults(self) -> tuple[float, ...]:
        """Settings of a batch slot without a request (its logits are not sampled from)."""
        raise NotImplementedError

    def is_argmax_invariant(self) -> bool:
        return False  # CFG and the penalty move the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # Same order as vLLM's own processors: added, removed, moved.
        for index, params, _prompt_ids, output_ids in batch_update.added:
            self.rows[index] = _Row(self._settings(params), output_ids)
            self.penalised[index] = False
            self.penalised[index, self.start_token] = True  # the reference's history starts with it
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            mask_a, mask_b = self.penalised[a].clone(), self.penalised[b].clone()
            if row_a is not None:
                self.rows[b] = row_a
                self.penalised[b] = mask_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self.rows[a] = row_b
                self.penalised[a] = mask_b
        self.columns = None

    def _per_row(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        if self.columns is None or self.columns.shape[0] != batch:
            rows = [self.rows.get(i) for i in range(batch)]
            values = [r.settings if r else self._defaults() for r in rows]
            self.columns = self._to_device(torch.tensor(values, dtype=dtype))
        return self.columns

    def _mark_new_tokens(self, batch: int) -> None:
        rows, ids, forget = [], [], []
        for index in range(batch):
            row = self.rows.get(index)
            if row is None:
                continue
            for token in row.output_ids[row.seen :]:
                if token < 0:  # a placeholder for a token still in flight (async scheduling)
                    break
                if row.seen == 0 and self.start_token_only_first:
                    forget.append(index * self.vocab + self.start_token)
                rows.append(index)
                ids.append(token)
                row.seen += 1
        if forget:  # before the new tokens: a generated start token stays penalised
            self.penalised.view(-1).index_fill_(0, self._to_device(torch.tensor(forget, dtype=torch.long)), False)
        if ids:
            flat = torch.tensor(rows, dtype=torch.long) * self.vocab + torch.tensor(ids, dtype=torch.long).clamp_(
                0, self.vocab - 1
            )
            self.penalised.view(-1).index_fill_(0, self._to_device(flat), True)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device without waiting for the GPU (pinned, non-blocking; the caching host
        allocator keeps the pinned block alive until the copy has run)."""
        if self.pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _penalise(self, logits: torch.Tensor, penalties: torch.Tensor, batch: int) -> torch.Tensor:
        penalised = torch.where(logits < 0, logits * penalties, logits / penalties)
        return torch.where(self.penalised[:batch], penalised, logits)


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
        batch = logits.shape[0]
        columns = self._per_row(batch, logits.dtype)
        weights, penalties = columns[:, 0:1], columns[:, 1:2]
        self._mark_new_tokens(batch)
        cond, uncond = logits[:, : self.vocab], logits[:, self.vocab :]
        mixed = self._penalise(cond + weights * (cond - uncond), penalties, batch)
        return torch.cat((mixed, torch.full_like(mixed, float("-inf"))), dim=1)


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
        columns = self._per_row(batch, torch.float32)
        self._mark_new_tokens(batch)
        logits = logits / columns[:, 0:1].to(logits.dtype)
        logits = apply_top_k(logits, columns[:, 1])
        logits = apply_top_p(logits, columns[:, 2:3])
        return self._penalise(logits, columns[:, 3:4].to(logits.dtype), batch)
