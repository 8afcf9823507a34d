"""Chatterbox multilingual (`ResembleAI/chatterbox`, 23 languages): English's Llama T3 and S3Gen with a larger
grapheme vocabulary, per-language text normalisation and the Cangjie table for Chinese."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..checkpoint.layout import HF_REPO_ID, CheckpointLayout
from . import english, register
from .base import ModelFamily

LAYOUT = CheckpointLayout(
    variant="multilingual",
    voice_encoder="ve.pt",
    t3="t3_mtl23ls_v2.safetensors",
    s3gen="s3gen.pt",
    conds="conds.pt",
    text_tokenizer="grapheme_mtl_merged_expanded_v1.json",
    cangjie_table="Cangjie5_TC.json",
    repo_id=HF_REPO_ID,
)


def multilingual_front_end(directory: Path, layout: CheckpointLayout, dicta_model: str | None) -> Any:
    """`dicta_model` None: a library load, which takes the Dicta model the environment's settings name."""
    from ..settings import Settings
    from ..text.tokenizers import MultilingualTokenizer

    return MultilingualTokenizer.from_files(
        directory / layout.text_tokenizer, directory / (layout.cangjie_table or ""),
        dicta_model=Settings().dicta_model if dicta_model is None else dicta_model,
    )  # fmt: skip


def t3_preset() -> Any:
    from ..models.t3 import T3Config

    return T3Config.multilingual()


FAMILY: ModelFamily = register(dataclasses.replace(
    english.FAMILY,
    name="multilingual",
    display_name="multilingual",
    layout=LAYOUT,
    hub_aliases=("multilingual", "mtl"),
    random_model="random-tiny-multilingual",
    t3_preset=t3_preset,
    text_front_end=multilingual_front_end,
    multilingual=True,
    random_recipe=dataclasses.replace(
        english.FAMILY.random_recipe,
        tokenizer_writer="chatterbox_vllm.random_checkpoint:write_multilingual_tokenizer",
    ),
))  # fmt: skip
