"""CFG mixing and T3's repetition penalty as a vLLM logits processor.

The model returns `[cond | uncond]` logits per request (see `model.py`). This processor runs where vLLM runs its
non-argmax-invariant processors: before vLLM's own penalties, temperature, min-p and top-p, and before greedy
argmax. So the order is the reference's: CFG -> repetition penalty -> temperature -> min-p -> top-p.

The repetition penalty is applied here rather than by vLLM because the reference penalises the start-of-speech
token plus the generated tokens, while vLLM's covers the prompt ids too (which are placeholders for a prompt of
embeddings). Requests set vLLM's own `repetition_penalty` to 1.

Nothing here may wait for the GPU: `apply` runs while the step's forward pass is still queued, and a blocking
host-to-device copy (a pageable `.to(device)`) would stall the CPU until it finishes, serialising vLLM's
scheduling of the next step behind it. Per-step inputs go through pinned memory with non-blocking copies.
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

from .plugin import CFG_WEIGHT, REPETITION_PENALTY


@dataclass
class _Row:
    cfg_weight: float
    penalty: float
    output_ids: list[int]  # vLLM's live list of this request's generated ids
    seen: int = 0  # how many of them are already in the penalty mask


class CFGLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        args = sampling_params.extra_args or {}
        for key, low in ((CFG_WEIGHT, 0.0), (REPETITION_PENALTY, None)):
            value = args.get(key)
            if value is None:
                raise ValueError(f"T3 requests need extra_args[{key!r}]")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"extra_args[{key!r}] must be a finite number, got {value!r}")
            if (low is not None and value < low) or (low is None and value <= 0):
                raise ValueError(f"extra_args[{key!r}] is out of range: {value!r}")

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        hf_config = vllm_config.model_config.hf_config
        t3 = dict(hf_config.chatterbox_t3)
        self.vocab = int(t3["speech_tokens_dict_size"])
        self.start_token = int(t3["start_speech_token"])
        self.device = device
        self.rows: dict[int, _Row] = {}
        slots = vllm_config.scheduler_config.max_num_seqs
        self.penalised = torch.zeros((slots, self.vocab), dtype=torch.bool, device=device)
        self.weights: torch.Tensor | None = None  # [batch, 1] per-row CFG weight and penalty, rebuilt on changes
        self.penalties: torch.Tensor | None = None
        self.pin = is_pin_memory and device.type == "cuda"

    def is_argmax_invariant(self) -> bool:
        return False  # CFG moves the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # Same order as vLLM's own processors: added, removed, moved.
        for index, params, _prompt_ids, output_ids in batch_update.added:
            args = params.extra_args or {}
            self.rows[index] = _Row(
                float(args.get(CFG_WEIGHT, 0.0)), float(args.get(REPETITION_PENALTY, 1.0)), output_ids
            )
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
        self.weights = None

    def _per_row(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.weights is None or self.weights.shape[0] != batch:
            rows = [self.rows.get(i) for i in range(batch)]
            weights = [r.cfg_weight if r else 0.0 for r in rows]
            penalties = [r.penalty if r else 1.0 for r in rows]
            self.weights = self._to_device(torch.tensor(weights, dtype=dtype).unsqueeze(1))
            self.penalties = self._to_device(torch.tensor(penalties, dtype=dtype).unsqueeze(1))
        assert self.penalties is not None
        return self.weights, self.penalties

    def _mark_new_tokens(self, batch: int) -> None:
        rows, ids = [], []
        for index in range(batch):
            row = self.rows.get(index)
            if row is None:
                continue
            for token in row.output_ids[row.seen :]:
                if token < 0:  # a placeholder for a token still in flight (async scheduling)
                    break
                rows.append(index)
                ids.append(token)
                row.seen += 1
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

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        batch = logits.shape[0]
        weights, penalties = self._per_row(batch, logits.dtype)
        self._mark_new_tokens(batch)
        cond, uncond = logits[:, : self.vocab], logits[:, self.vocab :]
        mixed = cond + weights * (cond - uncond)
        penalised = torch.where(mixed < 0, mixed * penalties, mixed / penalties)
        mixed = torch.where(self.penalised[:batch], penalised, mixed)
        return torch.cat((mixed, torch.full_like(mixed, float("-inf"))), dim=1)
