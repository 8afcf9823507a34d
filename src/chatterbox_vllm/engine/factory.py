"""Choosing and building the T3 engine: vLLM where it is installed and usable, the PyTorch loop otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from ..models.t3 import T3, load_t3
from ..models.t3.config import T3Config
from ..models.t3.gpt2 import GPT2Backbone
from .base import T3Engine
from .torch_engine import TorchT3Engine
from .vllm_engine import VLLMOptions

log = logging.getLogger(__name__)

EngineKind = Literal["auto", "vllm", "torch"]
ENGINE_KINDS: tuple[str, ...] = ("auto", "vllm", "torch")


def check_engine_kind(kind: str) -> None:
    """ValueError for a name that is no engine (without importing vLLM)."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown T3 engine {kind!r}; expected one of {', '.join(ENGINE_KINDS)}")


def resolve_engine_kind(kind: str) -> Literal["vllm", "torch"]:
    """`auto` -> `vllm` when vLLM imports (the GPU build with a GPU, or the CPU build), else `torch`."""
    check_engine_kind(kind)
    if kind != "auto":
        return kind  # type: ignore[return-value]
    from .vllm_engine import vllm_available

    return "vllm" if vllm_available() else "torch"


def prefix_only(t3: T3) -> T3:
    """Drop what only the decode loop needs (backbone blocks, heads; GPT-2's position table, which vLLM's model
    adds, and its unused token table): vLLM holds its own copy of those."""
    if isinstance(t3.tfmr, GPT2Backbone):
        t3.tfmr.h = torch.nn.ModuleList()
        t3.tfmr.wte = torch.nn.Embedding(1, 1)
        t3.tfmr.wpe = torch.nn.Embedding(1, 1)
    else:
        t3.tfmr.layers = torch.nn.ModuleList()
    t3.text_head = torch.nn.Linear(1, 1, bias=False)
    t3.speech_head = torch.nn.Linear(1, 1, bias=False)
    return t3


def build_t3_engine(
    kind: str,
    t3_weights: Path,
    config: T3Config,
    device: torch.device,
    *,
    vllm_options: VLLMOptions | None = None,
) -> T3Engine:
    """Load T3 from `t3_weights` for the chosen engine and say which one runs."""
    resolved = resolve_engine_kind(kind)
    t3 = load_t3(t3_weights, config).eval()
    if resolved == "torch":
        log.info("T3 engine: torch (PyTorch decode loop)%s", " - vLLM is not available" if kind == "auto" else "")
        return TorchT3Engine(t3.to(device), device=device)
    from .vllm_engine import VLLMT3Engine

    prefix = prefix_only(t3).to(device)
    # The prefix tensors keep float32 as in the reference; vLLM's copy runs in its configured dtype.
    return VLLMT3Engine(prefix, t3_weights, vllm_options or VLLMOptions())  # which logs its own line
