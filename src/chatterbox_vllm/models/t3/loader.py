"""Loading T3 weights (`t3_cfg`, `t3_mtl23ls_v2`, `t3_turbo_v1`, `t3_nano_v1` `.safetensors`) strictly, as the
reference does."""

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


def infer_config(state: dict[str, torch.Tensor]) -> T3Config:
    """The published model a weight file belongs to, told apart as the reference does: by the text vocabulary
    (704 English, 2454 multilingual, 50,276 GPT-2) and, for GPT-2, by the width (1024 Turbo, 768 Nano)."""
    text = state.get("text_emb.weight")
    rows, width = (text.shape[0], text.shape[1]) if text is not None else (0, 0)
    if rows == T3Config.multilingual().text_tokens_dict_size:
        return T3Config.multilingual()
    if rows == T3Config.turbo().text_tokens_dict_size:
        return T3Config.nano() if width == T3Config.nano().hidden_size else T3Config.turbo()
    return T3Config.english()


def load_t3(path: str | Path, config: T3Config | None = None) -> T3:
    """Read a T3 weight file into a new model (on CPU, eval mode); every tensor must be present and fit."""
    state = read_state_dict(path)
    if config is None:
        config = infer_config(state)
    model = build_t3(config)
    load_strict(model, state, str(path))
    return model.eval()
