"""Loading T3 weights (`t3_cfg.safetensors` / `t3_mtl23ls_v2.safetensors`) strictly, as the reference does."""

from __future__ import annotations

from pathlib import Path

import torch

from ...checkpoint.weights import load_strict, read_state_dict
from .config import T3Config
from .t3 import T3


def build_t3(config: T3Config, device: torch.device | str = "cpu") -> T3:
    """A T3 with uninitialised weights (fast: no random init of 530M parameters) and correct derived buffers."""
    with torch.device("meta"):
        model = T3(config)
    model.to_empty(device=device)
    model.reset_non_persistent_buffers()
    return model


def load_t3(path: str | Path, config: T3Config | None = None) -> T3:
    """Read a T3 weight file into a new model (on CPU, eval mode); every tensor must be present and fit."""
    state = read_state_dict(path)
    if config is None:
        text = state.get("text_emb.weight")
        multilingual = text is not None and text.shape[0] == T3Config.multilingual().text_tokens_dict_size
        config = T3Config.multilingual() if multilingual else T3Config.english()
    model = build_t3(config)
    load_strict(model, state, str(path))
    return model.eval()
