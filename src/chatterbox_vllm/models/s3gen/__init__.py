"""S3Gen, Chatterbox's speech-token-to-waveform model: token encoder + flow matching to a mel + HiFT vocoder.

Names are resolved on first use so that importing one submodule (e.g. `.campplus`) does not build the whole
package's import graph.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CAMPPlus": ".campplus",
    "CAMPPlusConfig": ".campplus",
    "CFMConfig": ".config",
    "ConditionalCFM": ".flow_matching",
    "ConditionalDecoder": ".estimator",
    "EstimatorConfig": ".config",
    "FlowConfig": ".config",
    "HiFTConfig": ".hift",
    "HiFTGenerator": ".hift",
    "S3GenConfig": ".config",
    "UpsampleEncoderConfig": ".config",
    "UpsampleConformerEncoder": ".encoder",
    "CausalMaskedDiffWithXvec": ".flow",
    "FlowInputs": ".flow",
    "S3Gen": ".s3gen",
    "build_s3gen": ".s3gen",
    "load_s3gen": ".s3gen",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
