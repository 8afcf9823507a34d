"""Process-wide settings, applied once where a process starts (the server, the CLI, a benchmark, the S3Gen worker).

Four things the settings decide are not a model's but the whole process's, and must be in place before anything
compiles, loads or captures: where the compile caches live (environment variables that vLLM's engine process
inherits), whether vLLM samples through FlashInfer (read by that process too), TF32 for float32 matrix products
(torch reads it when it picks kernels) and the interpreter's GIL switch interval (how long S3Gen's thread waits for
the GIL between kernel launches). Loading a model changes none of them; `configure_process` does, and
remembers what it applied so that a child process (the S3Gen worker) can be set up the same way.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .compile_cache import use_cache_dir

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

FLASHINFER_SAMPLER_ENV = "VLLM_USE_FLASHINFER_SAMPLER"


@dataclass(frozen=True)
class ProcessSettings:
    """The process-wide part of the settings, in plain picklable values (a child process receives it).
    `tf32` None: leave torch's switches as they are (no GPU to use them)."""

    cache_dir: Path
    flashinfer_sampler: bool
    tf32: bool | None
    gil_switch_interval_ms: float | None = None  # None: Python's own (5 ms)

    @classmethod
    def of(cls, settings: Settings) -> ProcessSettings:
        """Those of `settings`; TF32 only where they name a GPU (CHATTERBOX_DEVICE, auto: cuda when there is one)."""
        name = settings.device
        on_gpu = torch.cuda.is_available() if name == "auto" else torch.device(name).type == "cuda"
        return cls(settings.resolved_cache_dir(), settings.t3_flashinfer_sampler, settings.tf32 if on_gpu else None,
                   settings.gil_switch_interval_ms)  # fmt: skip


_applied: ProcessSettings | None = None


def configure_process(settings: Settings | ProcessSettings | None) -> ProcessSettings | None:
    """Apply the process-wide settings: the compile caches' variables (a value the user set wins), vLLM's FlashInfer
    sampler variable (only ever turned off here: a value the user set wins), the TF32 switches and the GIL switch
    interval. Call it before
    loading a model; calling it again with the same settings changes nothing. None (a child of a process that
    configured nothing): nothing to apply. Returns what it applied."""
    global _applied
    if settings is None:
        return None
    wanted = settings if isinstance(settings, ProcessSettings) else ProcessSettings.of(settings)
    effective = use_cache_dir(wanted.cache_dir)
    if not wanted.flashinfer_sampler:
        os.environ.setdefault(FLASHINFER_SAMPLER_ENV, "0")
    if wanted.tf32 is not None:
        # vLLM's T3 runs in bfloat16 and is not affected: S3Gen and the voice encoder are.
        torch.backends.cuda.matmul.allow_tf32 = wanted.tf32
        torch.backends.cudnn.allow_tf32 = wanted.tf32
    if wanted.gil_switch_interval_ms is not None:  # see the setting: S3Gen's kernel launches wait for the GIL
        sys.setswitchinterval(wanted.gil_switch_interval_ms / 1000)
    if wanted != _applied:
        log.debug("process settings: %s", wanted)
        # Where a second start finds what this one compiles (a variable the user set names its own place).
        log.info("compile caches: vLLM %s, Inductor %s", effective["VLLM_CACHE_ROOT"],
                 effective["TORCHINDUCTOR_CACHE_DIR"])  # fmt: skip
    _applied = wanted
    return wanted


def configured() -> ProcessSettings | None:
    """What `configure_process` last applied in this process; None: it never ran (a library caller's process)."""
    return _applied
