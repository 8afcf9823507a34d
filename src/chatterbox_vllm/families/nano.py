"""Chatterbox Nano (`ResembleAI/chatterbox-nano`): Turbo with GPT-2 small T3. Its mean-flow S3Gen, voice encoder
and built-in voice are Turbo's files (the same LFS blobs upstream)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..checkpoint.layout import NANO_REPO_ID
from . import register, turbo
from .base import ModelFamily


def t3_preset() -> Any:
    from ..models.t3 import T3Config

    return T3Config.nano()


FAMILY: ModelFamily = register(dataclasses.replace(
    turbo.FAMILY,
    name="nano",
    display_name="Nano",
    layout=dataclasses.replace(turbo.LAYOUT, variant="nano", t3="t3_nano_v1.safetensors", repo_id=NANO_REPO_ID),
    hub_aliases=("nano", "chatterbox-nano"),
    random_model="random-tiny-nano",
    t3_preset=t3_preset,
))  # fmt: skip
