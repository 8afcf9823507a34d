"""Chatterbox English (`ResembleAI/chatterbox`): Llama T3 with CFG, English tokenizer, 10-step CFM S3Gen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint.layout import HF_REPO_ID, CheckpointLayout
from . import register
from .base import ModelFamily, RandomRecipe

# The built-in voice of Llama T3 models (random checkpoints): T3 prompt tokens, S3Gen prompt tokens and mel frames.
LLAMA_CONDS = dict(conds_t3_prompt_tokens=150, conds_gen_prompt_tokens=156, conds_gen_prompt_frames=313)
# Speech tokens per text token a random Llama T3 checkpoint stops at (about the pace of speech).
LLAMA_SPEAKING_PACE = 2.5
# The shortest voice clip the Llama T3 models analyse (seconds).
LLAMA_MIN_VOICE_SECONDS = 0.5

LAYOUT = CheckpointLayout(
    variant="english",
    voice_encoder="ve.safetensors",
    t3="t3_cfg.safetensors",
    s3gen="s3gen.safetensors",
    conds="conds.pt",
    text_tokenizer="tokenizer.json",
    repo_id=HF_REPO_ID,
)


def english_front_end(directory: Path, layout: CheckpointLayout, dicta_model: str | None) -> Any:
    from ..text.tokenizers import EnglishTokenizer

    return EnglishTokenizer.from_file(directory / layout.text_tokenizer)


def t3_preset() -> Any:
    from ..models.t3 import T3Config

    return T3Config.english()


def cfm_s3gen() -> Any:
    """The 10-step CFM decoder with CFG (`s3gen.safetensors`)."""
    from ..models.s3gen import S3GenConfig

    return S3GenConfig()


def llama_sampling(**settings: Any) -> Any:
    from ..engine.base import SamplingParams

    return SamplingParams(**settings)


FAMILY: ModelFamily = register(ModelFamily(
    name="english",
    display_name="English",
    layout=LAYOUT,
    hub_aliases=("english", "en"),
    random_model="random-tiny",
    t3_preset=t3_preset,
    s3gen_preset=cfm_s3gen,
    mean_flow=False,
    text_front_end=english_front_end,
    multilingual=False,
    paralinguistic_tags=False,
    uses_cfg=True,
    sampling_defaults=llama_sampling,
    ignored_settings=(),
    unsupported_settings={
        "top_k": "top_k is a setting of the Turbo and Nano models; this model samples with min_p/top_p",
    },
    tail_tokens=0,
    keeps_last_token_audio=False,
    voice_loudness_lufs=None,
    min_voice_seconds=LLAMA_MIN_VOICE_SECONDS,
    random_recipe=RandomRecipe(
        **LLAMA_CONDS, speech_tokens_per_text_token=LLAMA_SPEAKING_PACE,
        tokenizer_writer="chatterbox_vllm.random_checkpoint:write_english_tokenizer",
    ),
))  # fmt: skip
