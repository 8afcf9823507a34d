"""Compile caches kept in the project's cache directory, so a second start reuses what the first one compiled.

A cold start on an H200 spent minutes compiling: vLLM's torch.compile of T3 (Dynamo, Inductor, Triton), FlashInfer's
JIT build of its sampling kernels, and Inductor's kernels for S3Gen's compiled flow blocks. Each of these libraries
keeps a cache on disk, but each in its own place under the home directory, which a container loses on every
restart. Here they all go under `<cache dir>/compile/`, one directory per library, so one volume (Docker's
`/models`) keeps them.

They are set as environment variables, before anything compiles, so vLLM's engine process (which inherits the
environment) uses them too. A variable the user set already is left as it is.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import platformdirs

from .settings import APP_NAME

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "CHATTERBOX_CACHE_DIR"  # Settings.cache_dir's variable (read by Settings only; benchmarks set it)
COMPILE_SUBDIR = "compile"

# Each library's cache directory variable and its directory under <cache dir>/compile/.
CACHE_DIRECTORIES: dict[str, str] = {
    "VLLM_CACHE_ROOT": "vllm",  # vLLM's torch.compile artefacts (torch_compile_cache/), FlashInfer autotune results
    "TORCHINDUCTOR_CACHE_DIR": "inductor",  # Inductor's FX graph and AOTAutograd caches, its generated kernels
    "TRITON_CACHE_DIR": "triton",  # compiled Triton kernels (Inductor's and vLLM's own)
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",  # FlashInfer's JIT-built CUDA modules (<base>/.cache/flashinfer)
    "CUDA_CACHE_PATH": "cuda",  # the CUDA driver's cache of PTX compiled for this GPU
}
# Inductor's caches that skip recompiling a graph it has seen (on by default in recent torch: kept on here).
CACHE_SWITCHES: dict[str, str] = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
# Where torch keeps each switch once read: (config module, attribute).
_SWITCH_CONFIG = {
    "TORCHINDUCTOR_FX_GRAPH_CACHE": ("torch._inductor.config", "fx_graph_cache"),
    "TORCHINDUCTOR_AUTOGRAD_CACHE": ("torch._functorch.config", "enable_autograd_cache"),
}


def default_cache_dir() -> Path:
    """The project's cache directory when no setting names one: the platform's user cache directory
    (Linux: $XDG_CACHE_HOME/chatterbox-vllm, ~/.cache/chatterbox-vllm by default)."""
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def cache_root(cache_dir: Path | None = None) -> Path:
    """`cache_dir` when given (the server passes its settings' directory down), else the settings' cache directory
    as the environment and .env name it (CHATTERBOX_CACHE_DIR), else the default: for callers given no settings
    (the library API, benchmarks)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from .settings import Settings

    return Settings().resolved_cache_dir()


def compile_cache_environment(cache_dir: Path) -> dict[str, str]:
    """The variables that put every compile cache under `cache_dir/compile/` (and keep Inductor's caches on)."""
    root = cache_dir / COMPILE_SUBDIR
    return {**{name: str(root / sub) for name, sub in CACHE_DIRECTORIES.items()}, **CACHE_SWITCHES}


def use_cache_dir(cache_dir: Path) -> dict[str, str]:
    """Put the compile caches in `cache_dir`, before anything compiles or vLLM's engine process starts (the
    variables reach it through the environment it inherits). Variables already set are kept. Returns the compile
    variables as they now are. The checkpoint cache and vLLM's T3 model directories get `cache_dir` passed."""
    effective = {}
    for name, value in compile_cache_environment(cache_dir).items():
        effective[name] = os.environ.setdefault(name, value)
    _sync_inductor_config(effective)
    log.debug("compile caches: %s", ", ".join(f"{name}={value}" for name, value in effective.items()))
    return effective


def _sync_inductor_config(effective: dict[str, str]) -> None:
    """torch reads its cache switches once, when their config modules are first imported (vLLM's import does it);
    if that happened before the variables were set, the switches are copied to them here."""
    for name, (module_name, attribute) in _SWITCH_CONFIG.items():
        module = sys.modules.get(module_name)
        if module is not None and name in effective and hasattr(module, attribute):
            setattr(module, attribute, effective[name] == "1")
