"""Model dimensions of a checkpoint directory.

Published checkpoints carry no config: they are the full-size models. Random checkpoints made for tests may be
"tiny" and then record their dimensions in `chatterbox_config.json`, which this module reads, so the same loading
code serves both, and the speaking pace their pieces stop at (their random T3 never samples the stop token).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..models.s3gen import S3GenConfig
from ..models.t3 import T3Config
from ..models.voice_encoder import VoiceEncoderConfig
from .layout import CONFIG_FILE, CheckpointLayout
from .weights import CheckpointError

CONFIG_FORMAT = 1


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of the three networks of one checkpoint."""

    t3: T3Config
    s3gen: S3GenConfig
    voice_encoder: VoiceEncoderConfig
    # Random checkpoints only: the most speech tokens a text piece gets per text token, about the pace of speech.
    # Trained weights stop on their own (None: max_new_tokens is the only bound).
    speech_tokens_per_text_token: float | None = None

    @classmethod
    def published(cls, variant: str) -> ModelConfig:
        """The published dimensions of a registered family (`families`)."""
        from .. import families

        family = families.get(variant)
        return cls(t3=family.t3_config(), s3gen=family.s3gen_config(), voice_encoder=VoiceEncoderConfig())


def load_model_config(directory: Path, layout: CheckpointLayout) -> ModelConfig:
    """The dimensions recorded next to the weights, or the published model's when nothing is recorded."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return ModelConfig.published(layout.variant)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable model config ({exc})") from exc
    if raw.get("format") != CONFIG_FORMAT:
        raise CheckpointError(f"{path}: unsupported config format {raw.get('format')!r} (expected {CONFIG_FORMAT})")
    if raw.get("variant", layout.variant) != layout.variant:
        raise CheckpointError(f"{path}: config says variant {raw.get('variant')!r}, files are {layout.variant!r}")
    pace = raw.get("speech_tokens_per_text_token")
    number = isinstance(pace, (int, float)) and not isinstance(pace, bool)
    if pace is not None and not (number and math.isfinite(pace) and pace > 0):
        raise CheckpointError(f"{path}: speech_tokens_per_text_token must be a positive number, not {pace!r}")
    try:
        return ModelConfig(
            t3=T3Config.from_dict(raw["t3"]),
            s3gen=S3GenConfig.from_dict(raw["s3gen"]),
            voice_encoder=VoiceEncoderConfig.from_dict(raw["voice_encoder"]),
            speech_tokens_per_text_token=None if pace is None else float(pace),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({type(exc).__name__}: {exc})") from exc
