"""Loading a checkpoint directory into the parts a `ChatterboxTTS` is made of, in one place.

Every way to get a model (`from_local`, `from_pretrained`, `from_settings`) first finds a checkpoint directory and
its layout, then calls `load_parts` with `LoadOptions`: where it runs, which T3 engine, how S3Gen runs. Nothing here
changes process-wide state (compile caches, TF32): that is `process_setup.configure_process`, called where a
process starts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .checkpoint.config import ModelConfig, load_model_config
from .checkpoint.layout import CONFIG_FILE, CheckpointLayout
from .conditioning import Conditionals, VoiceConditioner
from .conditioning_store import model_fingerprint
from .engine.base import T3Engine
from .engine.factory import build_t3_engine, check_engine_kind, resolve_engine_kind
from .engine.vllm_engine import VLLMOptions, fit_kv_cache
from .engine_start import EngineStart
from .models.s3gen import S3Gen
from .models.voice_encoder import VoiceEncoder, load_voice_encoder
from .process_setup import configured
from .settings import Settings
from .t3_stage import TextTokenizer
from .vocoder import S3GenOptions, VocoderSpec, load_s3gen_for

log = logging.getLogger(__name__)

# Told what a model load does now (for /health while the server starts): "loading S3Gen ...", ...
Progress = Callable[[str], None]


def no_progress(stage: str) -> None:
    log.debug("loading: %s", stage)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def settings_device(settings: Settings) -> torch.device:
    """T3's device: CHATTERBOX_T3_DEVICE, else the one CHATTERBOX_DEVICE names (auto: cuda when there is one)."""
    if settings.t3_device != "auto":
        return torch.device(settings.t3_device)
    return default_device() if settings.device == "auto" else torch.device(settings.device)


def voice_analysis_fingerprint(directory: Path, layout: CheckpointLayout, config: ModelConfig) -> str:
    """What a voice clip's analysis depends on for this checkpoint: the voice encoder's and S3Gen's weights, the
    config beside random checkpoints, the speech prompt's length and (Turbo, Nano) the loudness target."""
    return model_fingerprint(
        directory,
        (layout.voice_encoder, layout.s3gen, CONFIG_FILE),
        {"variant": layout.variant, "prompt_tokens": config.t3.speech_cond_prompt_len,
         "loudness_lufs": layout.family.voice_loudness_lufs},
    )  # fmt: skip


class BesideEngine(Protocol):
    """Work that runs while T3's engine starts (the server's S3Gen worker process and voice warm-up,
    `server/s3gen_beside.py`). `start` comes first thing in a load, before vLLM is even imported (seconds); on the
    engine's thread, `kv_cache_bytes` says which KV cache size to fix in vLLM (None: vLLM sizes it by its profile
    of the device; it may wait for that work to settle first, where the profile would count its allocations); once
    the model's voice analysis has loaded, `voices_loaded` hands it over; `stage` is what /health says while the
    engine starts."""

    @property
    def stage(self) -> str: ...

    def start(self, spec: VocoderSpec) -> None: ...

    def kv_cache_bytes(self, engine_kind: str, device: torch.device) -> int | None: ...

    def voices_loaded(self, voices: VoiceConditioner) -> None: ...


@dataclass(frozen=True)
class LoadOptions:
    """How a checkpoint is loaded: the device (None: cuda when there is one), the T3 engine (auto | vllm | torch)
    and vLLM's options, S3Gen's options, and the multilingual model's Hebrew diacritizer (`dicta_model`; None: as
    the environment's settings name it, "": none)."""

    device: str | torch.device | None = None
    engine: str = "auto"
    vllm: VLLMOptions | None = None
    s3gen: S3GenOptions = field(default_factory=S3GenOptions)
    dicta_model: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, gpu_memory_gib: float | None = None) -> LoadOptions:
        """What the CHATTERBOX_* settings say: device, engine, the VRAM limits (`gpu_memory_gib` in place of T3's
        budget: the share a VRAM plan gave it), T3's and S3Gen's compile and dtype switches."""
        device = settings_device(settings)
        limits = settings.limits()
        if gpu_memory_gib is not None:
            limits = dataclasses.replace(limits, gpu_memory_gib=gpu_memory_gib)
        vllm = VLLMOptions.from_limits(
            limits, device, explicit_dtype=settings.dtype is not None, compile=settings.t3_compile,
            cache_dir=settings.resolved_cache_dir(), data_parallel_size=settings.t3_data_parallel_size,
        )  # fmt: skip
        s3gen = S3GenOptions(
            tokenizer_device=None if limits.s3_tokenizer_on_gpu else "cpu",
            flow_dtype=settings.s3gen_dtype,
            compile_flow=settings.s3gen_compile,
            warm_up_tokens=settings.s3gen_warm_up_tokens,
        )
        return cls(device, settings.engine, vllm, s3gen, settings.dicta_model or "")  # "": none, as settings say


@dataclass
class ModelParts:
    """A loaded checkpoint, what `ChatterboxTTS` is built from. `conds`: the built-in voice (None: the checkpoint
    has none); `conditioning_fingerprint`: what stored voice conditionals must have been made with to be used;
    `vocoder_spec`: how another process loads the same S3Gen; `startup_phases`: seconds each loading phase took."""

    layout: CheckpointLayout
    config: ModelConfig
    device: torch.device
    engine: T3Engine
    tokenizer: TextTokenizer
    s3gen: S3Gen
    voice_encoder: VoiceEncoder
    conds: Conditionals | None
    voices: VoiceConditioner
    conditioning_fingerprint: str | None = None
    vocoder_spec: VocoderSpec | None = None
    warm_up_tokens: int | None = None
    startup_phases: dict[str, float] = field(default_factory=dict)


def load_parts(
    directory: Path, layout: CheckpointLayout, options: LoadOptions, progress: Progress | None = None,
    beside_engine: BesideEngine | None = None,
) -> ModelParts:  # fmt: skip
    """Load every part of the checkpoint in `directory`: T3's engine, started first on a thread of its own
    (`engine_start`: vLLM's import and engine process), and meanwhile S3Gen, the voice encoder, the text front end
    and the built-in voice. `progress` hears each stage; `beside_engine` is started first of all (what it starts
    runs while the engine starts). A failure of either fails the load with its own error."""
    progress = progress or no_progress
    device = torch.device(options.device) if options.device is not None else default_device()
    config = load_model_config(directory, layout)
    # S3Gen replays CUDA graphs unless the engine was told to run eagerly (the low-VRAM preset).
    graphs = not (options.vllm is not None and options.vllm.enforce_eager)
    # The S3Gen worker process sets itself up as this one was (TF32, caches) before it loads.
    spec = VocoderSpec(str(directory), str(device), options.s3gen, graphs=graphs, process=configured())
    if beside_engine is not None:  # before anything else, vLLM's import included: its start is the longest
        beside_engine.start(spec)
    check_engine_kind(options.engine)  # a bad name fails before anything loads (resolving `auto` imports vLLM)
    engine_start = EngineStart(functools.partial(_start_engine, directory, layout, config, device, options,
                                                 beside_engine))  # fmt: skip
    progress("loading S3Gen, the voice encoder and the text tokenizer while the T3 engine starts")
    try:
        started = time.perf_counter()
        s3gen = load_s3gen_for(directory, layout, config, device, options.s3gen, graphs=graphs)
        voice_encoder = load_voice_encoder(directory / layout.voice_encoder, config.voice_encoder).to(device).eval()
        tokenizer = layout.family.load_text_front_end(directory, options.dicta_model)
        conds_path = directory / layout.conds
        conds = Conditionals.load(conds_path).to(device) if conds_path.is_file() else None
        family = layout.family
        voices = VoiceConditioner(
            voice_encoder, s3gen, prompt_tokens=config.t3.speech_cond_prompt_len, device=device,
            loudness_lufs=family.voice_loudness_lufs, min_seconds=family.min_voice_seconds,
        )  # fmt: skip
        loaded = time.perf_counter()
        engine_start.parts_loaded.set()
        log.debug("S3Gen, the voice encoder and the text front end loaded in %.2f s, the T3 engine starting since "
                  "%.2f s", loaded - started, loaded - engine_start.started_at)  # fmt: skip
        if beside_engine is not None:
            beside_engine.voices_loaded(voices)
    except BaseException:
        engine_start.abandon()
        raise
    if beside_engine is not None:
        progress(beside_engine.stage)
    else:
        progress("loading T3 (PyTorch)" if engine_start.kind == "torch" else "starting the T3 engine (vLLM)")
    engine = engine_start.result()
    phases = {"load_s3gen_voice_encoder": loaded - started, "t3_engine": engine_start.seconds}
    if engine_start.waited_s:  # vLLM's profile waited for the parts: the engine's own start is the rest
        phases["t3_engine_waited_for_parts"] = engine_start.waited_s
    log.info("loaded %s Chatterbox from %s on %s (T3 engine: %s)", layout.variant, directory, device,
             type(engine).__name__)  # fmt: skip
    return ModelParts(
        layout=layout, config=config, device=device, engine=engine, tokenizer=tokenizer, s3gen=s3gen,
        voice_encoder=voice_encoder, conds=conds, voices=voices,
        conditioning_fingerprint=voice_analysis_fingerprint(directory, layout, config), vocoder_spec=spec,
        warm_up_tokens=options.s3gen.warm_up_tokens, startup_phases=phases,
    )  # fmt: skip


def _start_engine(
    directory: Path, layout: CheckpointLayout, config: ModelConfig, device: torch.device, options: LoadOptions,
    beside_engine: BesideEngine | None, start: EngineStart,
) -> T3Engine:  # fmt: skip
    """T3's engine, on `start`'s thread: the engine kind (`auto` imports vLLM), the KV cache size `beside_engine`
    fixes, then vLLM's own fit; a vLLM that profiles the GPU's free memory waits for the parts (`engine_start`)."""
    kind = start.kind = resolve_engine_kind(options.engine)
    vllm_options = options.vllm
    kv_bytes = beside_engine.kv_cache_bytes(kind, device) if beside_engine is not None else None
    if kv_bytes is not None and vllm_options is not None:
        vllm_options = dataclasses.replace(vllm_options, kv_cache_memory_bytes=kv_bytes)
    if kind == "vllm" and vllm_options is not None:
        vllm_options = fit_kv_cache(vllm_options, config.t3, device)  # no larger than a full batch needs
    if waits_for_parts(kind, device, planned_kv_cache=kv_bytes is not None):
        start.wait_for_parts()
    return build_t3_engine(kind, directory / layout.t3, config.t3, device, vllm_options=vllm_options)


def waits_for_parts(kind: str, device: torch.device, *, planned_kv_cache: bool) -> bool:
    """Whether T3's engine starts only once this process's other parts are on the GPU: vLLM on a GPU, unless its KV
    cache was fixed where the GPU's free memory was checked to hold T3's budget, the rest of the model and a margin
    (`planned_kv_cache`: `s3gen_beside.start_order`). Otherwise vLLM sizes its KV cache from a profile of the
    device's free memory, or checks its budget against it at start, and must see the parts there, as it did when
    they loaded first (a small card then fails with vLLM's message, not an out-of-memory in the parts)."""
    return kind == "vllm" and device.type == "cuda" and not planned_kv_cache
