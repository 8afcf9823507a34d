"""Chatterbox Turbo (`ResembleAI/chatterbox-turbo`): GPT-2 medium T3 without CFG, GPT-2 tokenizer with
paralinguistic tags, 2-step mean-flow S3Gen, three silence tokens after the speech, voices brought to -27 LUFS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint.layout import GPT2_TOKENIZER_FILES, GPT2_TOKENIZER_OPTIONAL, TURBO_REPO_ID, CheckpointLayout
from . import register
from .base import ModelFamily, RandomRecipe

# The reference's `S3GEN_SIL` tokens appended to T3's output, its voice loudness target and shortest voice clip.
TAIL_SILENCE_TOKENS = 3
VOICE_LUFS = -27.0
MIN_VOICE_SECONDS = 5.0

LAYOUT = CheckpointLayout(
    variant="turbo",
    voice_encoder="ve.safetensors",
    t3="t3_turbo_v1.safetensors",
    s3gen="s3gen_meanflow.safetensors",
    conds="conds.pt",
    text_tokenizer=GPT2_TOKENIZER_FILES[0],
    tokenizer_extras=GPT2_TOKENIZER_FILES[1:],
    optional_files=GPT2_TOKENIZER_OPTIONAL,
    repo_id=TURBO_REPO_ID,
)


def gpt2_front_end(directory: Path, layout: CheckpointLayout, dicta_model: str | None) -> Any:
    from ..text.gpt2 import GPT2TextTokenizer

    return GPT2TextTokenizer.from_dir(directory)


def t3_preset() -> Any:
    from ..models.t3 import T3Config

    return T3Config.turbo()


def mean_flow_s3gen() -> Any:
    from ..models.s3gen import S3GenConfig

    return S3GenConfig.meanflow_model()


def gpt2_sampling(**settings: Any) -> Any:
    """The reference's Turbo/Nano defaults; cfg_weight and min_p are dropped before this (`ignored_settings`)."""
    from ..engine.base import SamplingParams

    return SamplingParams.turbo(**settings)


FAMILY: ModelFamily = register(ModelFamily(
    name="turbo",
    display_name="Turbo",
    layout=LAYOUT,
    hub_aliases=("turbo", "chatterbox-turbo"),
    random_model="random-tiny-turbo",
    t3_preset=t3_preset,
    s3gen_preset=mean_flow_s3gen,
    mean_flow=True,
    text_front_end=gpt2_front_end,
    multilingual=False,
    paralinguistic_tags=True,
    uses_cfg=False,
    sampling_defaults=gpt2_sampling,
    ignored_settings=("cfg_weight", "min_p"),  # the reference warns and runs without them
    unsupported_settings={},
    tail_tokens=TAIL_SILENCE_TOKENS,
    keeps_last_token_audio=True,
    voice_loudness_lufs=VOICE_LUFS,
    min_voice_seconds=MIN_VOICE_SECONDS,
    random_recipe=RandomRecipe(
        conds_t3_prompt_tokens=375, conds_gen_prompt_tokens=250, conds_gen_prompt_frames=501,
        speech_tokens_per_text_token=8.0,
        tokenizer_writer="chatterbox_vllm.random_checkpoint:write_gpt2_tokenizer",
    ),
))  # fmt: skip
