"""S3Gen's worker process and voice analysis's warm-up started while T3's engine starts (`S3GenBeside`), where
that is safe, instead of after it.

Cold on an H200 the engine took 85 s and then the S3Gen process ~100 s more (load 19 s, compile 39 s, graphs 18 s,
voice warm-up 26 s: BENCHMARKS.md note 4), one after the other, though each runs in a process of its own and
voice analysis needs nothing of T3. The hazard is vLLM's start on a GPU: it sizes its KV cache from a profile of
the whole device (free memory before and after a dummy run), so memory another process takes meanwhile is taken
from the KV cache, and memory one frees meanwhile fails vLLM's check that nothing was freed while it profiled; and
it refuses to start when the device's free memory is below its budget. So S3Gen starts beside the engine only:

* with one S3Gen worker process (the `process` layout, the default with preset high on a GPU). The thread layout
  (presets low and medium by default) keeps the serial order: its S3Gen runs on the model object that exists
  only once the engine is up, preset low captures no graphs (little to overlap), and 6-12 GB cards have no room
  for an error in the fixed KV cache below. Several workers and T3's data parallelism keep it too (not planned);
* with vLLM's KV cache fixed (`kv_cache_memory_bytes`, vLLM 0.11 and later) at what the T3 budget holds as the VRAM
  plan counts it (`vram_plan.t3_kv_cache_bytes`): vLLM then profiles no free memory. The process starts first
  thing in the load, before vLLM is imported (~10 s on the H200, the S3Gen process's head start); whether this
  vLLM takes the size is asked when the engine is about to start, and a vLLM without it starts only once the S3Gen
  process is ready (S3Gen first, then the engine: its profile then sees settled memory);
* when the T3 budget, the rest of the model (`vram_plan.model_need`'s pipeline: both processes' S3Gen, the voice
  encoder, the CUDA contexts, S3Gen's graphs and activations) and `MARGIN_GIB` fit the GPU's free memory together,
  so vLLM's start check holds whatever S3Gen took first.

On a CPU (or with the PyTorch engine) nothing profiles the device: S3Gen starts beside whenever its layout is the
process. CHATTERBOX_S3GEN_START_BESIDE_T3=false keeps the serial order everywhere. The reason for a serial start is
logged.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass

import torch

from ..conditioning import VoiceConditioner
from ..engine.vllm_engine import takes_kv_cache_bytes
from ..loading import settings_device
from ..placement import resolve_placement
from ..settings import Settings
from ..vocoder import VocoderSpec
from ..vram_plan import model_need, t3_kv_cache_bytes
from .s3gen_process import S3GenProcess

log = logging.getLogger(__name__)

# GiB of free memory kept beyond the T3 budget and the pipeline: the fixed KV cache is an estimate (weights and
# activations as `vram_plan` counts them), where vLLM's profile would have measured.
MARGIN_GIB = 1.0


@dataclass(frozen=True)
class StartFacts:
    """What decides whether S3Gen may start beside T3's engine: T3's device type, the engine setting (auto | vllm |
    torch: not resolved, which would import vLLM), the S3Gen layout (thread | process) and workers, T3's engines,
    and the free memory of T3's GPU (GiB; None off a GPU)."""

    device_type: str
    engine: str
    layout: str
    workers: int
    t3_engines: int = 1
    free_gib: float | None = None


@dataclass(frozen=True)
class StartOrder:
    """S3Gen's start: beside T3's engine (with vLLM's KV cache fixed at `kv_cache_memory_bytes`, None: as vLLM sizes
    it), or after it, and why."""

    beside: bool
    kv_cache_memory_bytes: int | None = None
    reason: str = ""


def start_order(settings: Settings, variant: str, t3_budget_gib: float, facts: StartFacts) -> StartOrder:
    """Whether S3Gen starts beside T3's engine for a model of `variant` with T3 budget `t3_budget_gib` (the module's
    docstring says when)."""
    if not settings.s3gen_start_beside_t3:
        return StartOrder(False, reason="CHATTERBOX_S3GEN_START_BESIDE_T3 is false")
    if facts.layout != "process":
        return StartOrder(False, reason="S3Gen runs on a thread of the server process (the thread layout)")
    if facts.workers > 1:
        return StartOrder(False, reason="several S3Gen workers are placed (not started beside the engine yet)")
    if facts.t3_engines > 1:
        return StartOrder(False, reason="T3 runs data parallel (not started beside the engine yet)")
    if facts.device_type != "cuda" or facts.engine == "torch":
        return StartOrder(True)  # nothing profiles the device's free memory
    limits = settings.limits()
    kv_bytes = t3_kv_cache_bytes(variant, t3_budget_gib, limits.max_model_len)
    if kv_bytes is None:
        return StartOrder(False, reason=f"the T3 budget of {t3_budget_gib:g} GiB holds too little KV cache to fix")
    need = model_need(variant, variant, settings.preset, limits.max_model_len, facts.layout)
    wanted = t3_budget_gib + need.pipeline_gib + MARGIN_GIB
    if facts.free_gib is None or facts.free_gib < wanted:
        free = "unknown" if facts.free_gib is None else f"{facts.free_gib:.2f} GiB"
        parts = f"{t3_budget_gib:g} + {need.pipeline_gib:g} + {MARGIN_GIB:g} GiB"
        reason = f"the GPU's free memory ({free}) is below T3's budget, the pipeline and a margin ({parts})"
        return StartOrder(False, reason=reason)
    return StartOrder(True, kv_bytes)


def start_facts(settings: Settings) -> StartFacts:
    """`StartFacts` of this host and these settings (the free memory of T3's GPU measured now)."""
    device = settings_device(settings)
    placement = resolve_placement(settings, t3_device=device)
    layout = "process" if placement.s3gen_in_processes(settings.s3gen_layout_on(device.type)) else "thread"
    free: float | None = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] / 2**30
        if settings.vram_budget_gib is not None:  # the budget T3's GPU is planned in
            free = min(free, settings.vram_budget_gib)
    return StartFacts(device.type, settings.engine, layout, placement.workers, settings.t3_data_parallel_size, free)


class S3GenBeside:
    """The S3Gen worker process and voice analysis's warm-up of one model: the process started first thing in the
    load, the warm-up once the voice encoder is loaded (`loading.BesideEngine`); the synthesizer takes them over
    (`take`) once the model has loaded."""

    def __init__(self, settings: Settings, model_id: str, order: StartOrder) -> None:
        self.settings = settings
        self.model_id = model_id
        self.order = order
        self.process: S3GenProcess | None = None
        self.voice_warm_up: Future | None = None  # voice analysis's warm-up, on a thread of its own

    @property
    def stage(self) -> str:
        return "starting the T3 engine beside the S3Gen process (its load, compile and CUDA graphs)"

    def start(self, spec: VocoderSpec) -> None:
        """Start the S3Gen process on its placed device (called first in `load_parts`)."""
        device = resolve_placement(self.settings, t3_device=torch.device(spec.device)).s3gen_devices[0]
        self.process = S3GenProcess.from_settings(spec, self.settings, device=str(device), model=self.model_id)
        log.info("%s: S3Gen process started beside the T3 engine", self.model_id)

    def voices_loaded(self, voices: VoiceConditioner) -> None:
        """Start voice analysis's warm-up (on a thread of its own), once the model's voice analysis has loaded."""
        self._warm_up_voices(voices)

    def kv_cache_bytes(self, engine_kind: str, device: torch.device) -> int | None:
        """The KV cache size to fix in vLLM (None: none, off a GPU or with the PyTorch engine), asked on the engine's
        thread as it is about to start. A vLLM that cannot take the size starts once the S3Gen process is ready (or
        failed: the synthesizer reports that), so that its profile of the device sees S3Gen's memory settled."""
        if device.type != "cuda" or engine_kind != "vllm" or self.order.kv_cache_memory_bytes is None:
            return None
        if takes_kv_cache_bytes():
            log.info("%s: vLLM's KV cache fixed at %.2f GiB (the S3Gen process starts beside it)", self.model_id,
                     self.order.kv_cache_memory_bytes / 2**30)  # fmt: skip
            return self.order.kv_cache_memory_bytes
        log.info("%s: this vLLM cannot be given its KV cache's size (kv_cache_memory_bytes): T3's engine starts "
                 "once the S3Gen process is ready", self.model_id)  # fmt: skip
        if self.process is not None:
            futures_wait([self.process.ready])
        return None

    def _warm_up_voices(self, voices: VoiceConditioner) -> None:
        if self.voice_warm_up is not None:
            return  # started already
        future: Future = Future()

        def warm_up() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                with torch.inference_mode():
                    voices.warm_up()  # logs its own failure (the first upload then pays the warm-up)
                future.set_result(None)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the warm-up
                future.set_exception(exc)

        threading.Thread(target=warm_up, name="voice-warm-up", daemon=True).start()
        self.voice_warm_up = future

    def take(self) -> tuple[S3GenProcess, Future | None]:
        """The started process and the voice warm-up's future, now the synthesizer's (which shuts the process down)."""
        if self.process is None:
            raise RuntimeError("the S3Gen process was not started beside the T3 engine")
        process, self.process = self.process, None
        return process, self.voice_warm_up

    def close(self) -> None:
        """Stop the process when the model failed to load before a synthesizer took it over."""
        if self.process is not None:
            process, self.process = self.process, None
            process.shutdown()
