"""How several loaded models share one GPU: what each needs, whether they fit the VRAM budget, and the T3 budget
each one gets.

A loaded model takes its T3 budget (vLLM's weights + KV cache, the preset's `gpu_memory_gib`) plus the rest of its
pipeline: S3Gen with its CUDA graphs and activations, the voice encoder, the speech tokenizer and the CUDA context
of vLLM's engine process. The rest is a measured figure per T3 backbone and preset (`PIPELINE_GIB`), plus, with S3Gen
in a process of its own, that process's CUDA context and weights (`S3GEN_PROCESS_GIB`). When the models do not fit
and no T3 budget was set explicitly, the memory left after every pipeline is split evenly between the T3s, as long
as each share still holds T3's weights and one request of `max_model_len` tokens; otherwise start-up stops with
the figures and what to change. One model alone is not planned: vLLM checks its own budget, as it always has.

With stages placed on several GPUs (`placement`), `plan_devices` says what each GPU must hold, model by model: on
T3's GPU its budget and the pipeline; on each further GPU of T3's data parallelism another T3 budget and a CUDA
context; on each S3Gen worker's GPU that worker's process (`s3gen_worker_gib`). A GPU whose share does not fit its
free memory stops start-up with the figures and what to change.

Within its budget, vLLM's KV cache is fixed at what a full batch of full-length requests needs where that is less
than the budget leaves (`t3_kv_cache_to_fix`): a larger cache holds only blocks no request can use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .models.t3.config import T3Config
from .placement import Placement
from .settings import EngineLimits

# GiB a model takes beside its T3 budget, by T3 backbone and preset: the peak device memory of a whole server
# process (`benchmarks/e2e.py vram`) minus the T3 budget, rounded up. Llama (English, multilingual): multilingual
# on an H100, 2026-11-25 (3.85 - 1.75, 8.57 - 5, 13.56 - 10), and on an H200, 2026-11-28, low 4.60 - 1.75: the
# larger low figure is taken, and the same 0.75 GiB added to medium and high, which were not measured there.
# GPT-2 (Turbo, Nano): Turbo on the H200, 2026-11-28 (4.98 - 1.75, 9.91 - 5, 15.72 - 10); its S3Gen holds more
# (torch reserved 2.4-4.7 GiB against multilingual's 1.9-2.1), so it is counted on its own. BENCHMARKS.md has both.
PIPELINE_GIB: dict[str, dict[str, float]] = {
    "llama": {"low": 2.9, "medium": 4.4, "high": 4.4},
    "gpt2": {"low": 3.3, "medium": 5.0, "high": 5.8},
}
# CHATTERBOX_S3GEN_LAYOUT=process: the S3Gen worker process's own CUDA context (~0.5 GB) and its copy of S3Gen's
# flow and HiFT weights (float32, ~0.5 GiB; the server process keeps its S3Gen for voice analysis). S3Gen's graphs
# and activations move to the child rather than double, so they are already in PIPELINE_GIB. Not yet measured.
S3GEN_PROCESS_GIB = 1.0
# An S3Gen worker process beyond the first on T3's GPU, or on another GPU, also holds S3Gen's graphs and activations
# for the preset's batches (which PIPELINE_GIB counts once, on T3's GPU). Not yet measured per worker: torch's
# reserved memory of a whole server process (BENCHMARKS.md: multilingual 1.22 / 2.09 / 2.07 GiB, Turbo 2.37 / 3.90 /
# 4.67 GiB for low / medium / high), S3Gen's work being most of it, rounded up.
S3GEN_WORK_GIB: dict[str, dict[str, float]] = {
    "llama": {"low": 1.3, "medium": 2.2, "high": 2.2},
    "gpt2": {"low": 2.4, "medium": 4.0, "high": 4.7},
}
# Another T3 engine of vLLM's data parallelism on its GPU: its process's CUDA context beside its budget.
CUDA_CONTEXT_GIB = 0.5
# Room within a T3 budget beyond weights and one request's KV cache: vLLM's profiling activations, sampler buffers.
T3_ACTIVATION_GIB = 0.4
_T3_DTYPE_BYTES = 2  # the presets run T3 in bfloat16
# vLLM pages its KV cache in blocks of 16 tokens on GPUs and 128 on CPUs (0.26 to 0.32): a size counted in units of
# 128 tokens is whole blocks on either.
KV_UNIT_TOKENS = 128


class VRAMPlanError(ValueError):
    """The models asked for do not fit the VRAM budget; the message gives the figures and what to change."""


@dataclass(frozen=True)
class ModelNeed:
    """What one model to load needs on the GPU: `min_t3_gib` is the least T3 budget it can run in."""

    model: str  # the setting that names it (english, turbo, a directory, ...)
    variant: str
    pipeline_gib: float
    min_t3_gib: float
    s3gen_work_gib: float = 0.0  # S3Gen's graphs and activations in a worker process (`S3GEN_WORK_GIB`)

    @property
    def s3gen_worker_gib(self) -> float:
        """An S3Gen worker process that holds its own graphs and activations: context and weights, and that work."""
        return round(S3GEN_PROCESS_GIB + self.s3gen_work_gib, 2)


def t3_weight_bytes(config: T3Config, dtype_bytes: int = _T3_DTYPE_BYTES) -> int:
    """T3's parameters in `dtype_bytes`: the transformer layers, the text and speech embeddings and heads."""
    h, layers = config.hidden_size, config.num_hidden_layers
    # q and o full width, k and v per KV head (GPT-2: fused qkv, all heads, so k and v are full width too); a gated
    # MLP (Llama) has three matrices, GPT-2's two (4h). Biases and norms are ignored.
    kv = config.num_key_value_heads * config.head_dim
    per_layer = 2 * h * h + 2 * h * kv + (3 if config.gated_mlp else 2) * h * config.intermediate_size
    vocab = config.text_tokens_dict_size + config.speech_tokens_dict_size
    return (layers * per_layer + 2 * vocab * h) * dtype_bytes


def t3_kv_bytes_per_token(config: T3Config, dtype_bytes: int = _T3_DTYPE_BYTES) -> int:
    """KV cache one request's token holds: K and V in every layer, for both CFG rows where the model has CFG."""
    width = config.num_key_value_heads * config.head_dim  # GPT-2: all heads, heads x head_dim = hidden
    rows = 2 if config.supports_cfg else 1
    return config.num_hidden_layers * 2 * width * dtype_bytes * rows


def t3_kv_room_bytes(config: T3Config, t3_budget_bytes: int, dtype_bytes: int = _T3_DTYPE_BYTES) -> int:
    """The KV cache a T3 budget holds as this plan counts it: the budget less T3's weights and `T3_ACTIVATION_GIB`
    (what vLLM's own profile found beside the weights for the multilingual T3 run eagerly on an H200, 2026-11-28:
    0.18 GiB of activations, 0.22 GiB outside torch)."""
    return t3_budget_bytes - t3_weight_bytes(config, dtype_bytes) - int(T3_ACTIVATION_GIB * 2**30)


def t3_kv_cache_bytes(variant: str, t3_budget_gib: float, max_model_len: int) -> int | None:
    """The KV cache a T3 budget holds as this plan counts it (`t3_kv_room_bytes`; the high preset's 10 GiB: ~8.6
    GiB, ~37,000 tokens of the Llama T3, where vLLM's own profile found ~38,000 on an H200). Given to vLLM as its KV
    cache's size when it must not profile the device (`s3gen_beside`). None when that leaves less than one request
    of `max_model_len` tokens (vLLM's profile then says what is short)."""
    config = T3Config.for_variant(variant)
    kv = t3_kv_room_bytes(config, int(t3_budget_gib * 2**30))
    return kv if kv >= t3_kv_bytes_per_token(config) * max_model_len else None


def t3_kv_need_bytes(
    config: T3Config, max_num_seqs: int, max_model_len: int, dtype_bytes: int = _T3_DTYPE_BYTES
) -> int:
    """The KV cache in which `max_num_seqs` requests of `max_model_len` tokens all decode at once: all that vLLM
    can ever use for T3 (prefix caching is off, so a block that no running request holds stays empty). Counted in
    vLLM's blocks (`KV_UNIT_TOKENS`): each request's tokens rounded up to whole units, plus a margin of one unit per
    request (a slot scheduled ahead by vLLM's asynchronous scheduling, a block size other than 16 or 128) and one
    unit for vLLM's null block (block 0, which holds no request). Preset low, Turbo: 2 x 1,536 tokens need 0.28
    GiB, 0.32 GiB with the margin; the Llama T3's CFG rows make its tokens 2.5x larger (0.79 GiB)."""
    per_request = math.ceil(max_model_len / KV_UNIT_TOKENS) + 1
    tokens = (max_num_seqs * per_request + 1) * KV_UNIT_TOKENS
    return tokens * t3_kv_bytes_per_token(config, dtype_bytes)


def t3_kv_cache_to_fix(
    config: T3Config, max_num_seqs: int, max_model_len: int, t3_budget_bytes: int, *,
    dtype_bytes: int = _T3_DTYPE_BYTES, fixed: int | None = None,
) -> int | None:  # fmt: skip
    """The KV cache size to give vLLM (`kv_cache_memory_bytes`): what a full batch needs (`t3_kv_need_bytes`) where
    that is less than the size already fixed (`fixed`: S3Gen starting beside the engine) or, with none fixed, than
    what the T3 budget leaves (`t3_kv_room_bytes`); otherwise `fixed` (None: vLLM sizes its cache from the budget,
    as it always has). vLLM would otherwise fill its budget with blocks no request can use: Turbo at preset low
    holds ~0.84 GiB of KV cache (0.74 from a 1.65 GiB budget on an H200) where 0.32 serve both requests whole. The
    Llama T3 (English, multilingual) needs more than any preset's budget leaves (low: 0.79 GiB against ~0.37), so
    its cache stays as vLLM sizes it. With CUDA graphs (presets medium, high) their memory comes beside the fixed
    cache, as beside S3Gen's start."""
    need = t3_kv_need_bytes(config, max_num_seqs, max_model_len, dtype_bytes)
    room = fixed if fixed is not None else t3_kv_room_bytes(config, t3_budget_bytes, dtype_bytes)
    return need if need < room else fixed


def model_need(model: str, variant: str, preset: str, max_model_len: int, s3gen_layout: str = "thread") -> ModelNeed:
    """What `model` needs; S3Gen in a process of its own (`s3gen_layout` "process") adds `S3GEN_PROCESS_GIB`."""
    config = T3Config.for_variant(variant)
    one_request = t3_kv_bytes_per_token(config) * max_model_len
    min_t3 = (t3_weight_bytes(config) + one_request) / 2**30 + T3_ACTIVATION_GIB
    pipeline = PIPELINE_GIB[config.backbone][preset] + (S3GEN_PROCESS_GIB if s3gen_layout == "process" else 0.0)
    work = S3GEN_WORK_GIB[config.backbone][preset]
    return ModelNeed(model, variant, round(pipeline, 2), round(min_t3, 2), work)


def plan_t3_budgets(
    needs: list[ModelNeed], limits: EngineLimits, budget_gib: float, *, t3_budget_explicit: bool
) -> list[float]:
    """The T3 budget (GiB) of each model in `needs`, so that all of them fit `budget_gib` together.

    Every model gets the preset's budget when all fit with it. Otherwise, unless the budget was set explicitly
    (then it is kept and the plan fails), the memory left after the pipelines is shared evenly (rounded down to
    0.01 GiB). Raises VRAMPlanError, with the figures, when no such plan exists.
    """
    preset_t3 = limits.gpu_memory_gib
    pipelines = sum(need.pipeline_gib for need in needs)
    if preset_t3 * len(needs) + pipelines <= budget_gib:
        return [preset_t3] * len(needs)
    share = math.floor((budget_gib - pipelines) / len(needs) * 100) / 100
    short = [need for need in needs if share < need.min_t3_gib]
    if t3_budget_explicit or short:
        raise VRAMPlanError(_does_not_fit(needs, preset_t3, budget_gib, share, t3_budget_explicit))
    return [share] * len(needs)


def _does_not_fit(
    needs: list[ModelNeed], preset_t3: float, budget_gib: float, share: float, t3_budget_explicit: bool
) -> str:
    each = ", ".join(
        f"{need.model} ({need.variant}): T3 {preset_t3:g} + pipeline {need.pipeline_gib:g} GiB "
        f"(its T3 needs at least {need.min_t3_gib:g})"
        for need in needs
    )
    total = sum(preset_t3 + need.pipeline_gib for need in needs)
    lines = [
        f"the {len(needs)} models do not fit the VRAM budget of {budget_gib:.2f} GiB: {each}; {total:.2f} GiB in all."
    ]
    if t3_budget_explicit and share >= max(need.min_t3_gib for need in needs):
        lines.append(f"CHATTERBOX_GPU_MEMORY_GIB={preset_t3:g} is set: lower it to {share:g} or less, or unset it")
    else:
        lines.append(
            "Load fewer models (CHATTERBOX_EXTRA_MODELS), pick a smaller preset (CHATTERBOX_PRESET: low shrinks the "
            "pipeline too), lower CHATTERBOX_MAX_MODEL_LEN, or raise CHATTERBOX_VRAM_BUDGET_GIB if the GPU has more "
            "free memory"
        )
    return " ".join(lines)


# -------------------------------------------------------------------------------------------- several GPUs
@dataclass
class DeviceNeed:
    """What one GPU must hold: each part's name and GiB."""

    device: str
    parts: list[tuple[str, float]] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return round(sum(gib for _, gib in self.parts), 2)

    def describe(self) -> str:
        return " + ".join(f"{name} {gib:g}" for name, gib in self.parts) + f" = {self.total_gib:g} GiB"


def plan_devices(
    placement: Placement, needs: Sequence[ModelNeed], t3_budgets: Sequence[float], *, layout: str = "thread",
    t3_engines: int = 1,
) -> dict[str, DeviceNeed]:  # fmt: skip
    """What each GPU of `placement` holds for the models `needs` (their T3 budgets `t3_budgets`): on T3's GPU each
    budget and pipeline (with S3Gen in processes, the pipeline counts one worker's context and weights, its work
    being in the pipeline already); on GPUs 1 to `t3_engines` - 1 another budget and context; each further S3Gen
    worker its whole process. CPU devices are left out."""
    devices: dict[str, DeviceNeed] = {}

    def add(device: torch.device, name: str, gib: float) -> None:
        if device.type == "cuda":
            devices.setdefault(str(device), DeviceNeed(str(device))).parts.append((name, round(gib, 2)))

    in_processes = placement.s3gen_in_processes(layout)
    for need, budget in zip(needs, t3_budgets, strict=True):
        label = f"{need.model} " if len(needs) > 1 else ""
        add(placement.t3_device, f"{label}T3", budget)
        add(placement.t3_device, f"{label}pipeline", need.pipeline_gib - (S3GEN_PROCESS_GIB if layout == "process"
                                                                          else 0.0))  # fmt: skip
        for rank in range(1, t3_engines):
            add(torch.device("cuda", rank), f"{label}T3 engine {rank}", budget + CUDA_CONTEXT_GIB)
        if not in_processes:
            continue
        first_on_t3 = True  # its work is the pipeline's
        for device in placement.s3gen_devices:
            if device == placement.t3_device and first_on_t3:
                first_on_t3 = False
                add(device, f"{label}S3Gen worker", S3GEN_PROCESS_GIB)
            else:
                add(device, f"{label}S3Gen worker", need.s3gen_worker_gib)
    return devices


def check_devices(devices: Mapping[str, DeviceNeed], free_gib: Mapping[str, float]) -> None:
    """Raise VRAMPlanError naming every GPU whose share exceeds its free memory (`free_gib` by device)."""
    short = [need for device, need in devices.items() if need.total_gib > free_gib[device]]
    if not short:
        return
    each = "; ".join(f"{need.device} holds {need.describe()}, {free_gib[need.device]:.2f} GiB free" for need in short)
    raise VRAMPlanError(
        f"the placement does not fit: {each}. Place fewer S3Gen workers there (CHATTERBOX_S3GEN_WORKERS_PER_DEVICE, "
        "CHATTERBOX_S3GEN_DEVICES), pick a smaller preset (CHATTERBOX_PRESET), or lower CHATTERBOX_GPU_MEMORY_GIB"
    )
