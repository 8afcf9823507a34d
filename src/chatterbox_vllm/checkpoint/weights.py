"""Reading weight files and loading them into modules with strict, explainable checks.

The reference loads most files strictly; a mismatch there would be a silent quality bug for our users, so every
missing, unexpected or mis-shaped tensor becomes a `CheckpointError` that names the file and the tensor.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` or a `.pt` state dict (the latter with `weights_only=True`, never arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (
        SafetensorError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        OSError,
        RuntimeError,
        ValueError,
    ) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return dict(state)


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    may_be_absent: Iterable[str] = (),
) -> None:
    """Copy `state` into `module`, refusing any missing, unexpected or mis-shaped tensor.

    `may_be_absent` names module tensors a published file is known to omit (the reference loads that file with
    `strict=False`); those keep the value the module was built with.
    """
    expected = module.state_dict()
    optional = set(may_be_absent)
    missing = [name for name in expected if name not in state and name not in optional]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_preview(unexpected)}")
        raise CheckpointError(f"{source}: does not fit the model; " + "; ".join(parts))
    for name, tensor in state.items():
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(want.shape)}"
            )
        if tensor.dtype.is_floating_point != want.dtype.is_floating_point:
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {tensor.dtype}, the model expects {want.dtype}")
    module.load_state_dict(state, strict=False)


def _preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
