"""File names of the published Chatterbox checkpoints (Hugging Face `ResembleAI/chatterbox`, `-turbo`, `-nano`).

The names are the real ones so that a directory downloaded from the hub and a random checkpoint made by
`chatterbox-vllm make-checkpoint` load through exactly the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Variant = Literal["english", "multilingual", "turbo", "nano"]
VARIANTS: tuple[Variant, ...] = ("english", "multilingual", "turbo", "nano")

HF_REPO_ID = "ResembleAI/chatterbox"
TURBO_REPO_ID = "ResembleAI/chatterbox-turbo"
NANO_REPO_ID = "ResembleAI/chatterbox-nano"
# Turbo's and Nano's GPT-2 tokenizer, read by the reference with `AutoTokenizer.from_pretrained(checkpoint_dir)`:
# three files it needs, two more it reads when present (see text/gpt2.py).
GPT2_TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json")
GPT2_TOKENIZER_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")

# Written by make-checkpoint next to the weights; absent in published checkpoints (which are full size).
CONFIG_FILE = "chatterbox_config.json"


@dataclass(frozen=True)
class CheckpointLayout:
    """Which file holds which component for one model variant."""

    variant: Variant
    voice_encoder: str
    t3: str
    s3gen: str
    conds: str
    text_tokenizer: str
    cangjie_table: str | None = None
    repo_id: str = HF_REPO_ID
    # More files of the text tokenizer, beside `text_tokenizer` (GPT-2's merges and added tags).
    tokenizer_extras: tuple[str, ...] = ()
    # Fetched with the rest when the repo has them, not required (GPT-2's tokenizer config).
    optional_files: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        names = (self.voice_encoder, self.t3, self.s3gen, self.conds, self.text_tokenizer, *self.tokenizer_extras)
        return names + ((self.cangjie_table,) if self.cangjie_table else ())

    @property
    def is_gpt2(self) -> bool:
        """Turbo and Nano: GPT-2 T3, GPT-2 tokenizer, mean-flow S3Gen."""
        return self.variant in ("turbo", "nano")


ENGLISH = CheckpointLayout(
    variant="english",
    voice_encoder="ve.safetensors",
    t3="t3_cfg.safetensors",
    s3gen="s3gen.safetensors",
    conds="conds.pt",
    text_tokenizer="tokenizer.json",
)

MULTILINGUAL = CheckpointLayout(
    variant="multilingual",
    voice_encoder="ve.pt",
    t3="t3_mtl23ls_v2.safetensors",
    s3gen="s3gen.pt",
    conds="conds.pt",
    text_tokenizer="grapheme_mtl_merged_expanded_v1.json",
    cangjie_table="Cangjie5_TC.json",
)

TURBO = CheckpointLayout(
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

# Nano's s3gen_meanflow.safetensors, ve.safetensors and conds.pt are Turbo's files (the same LFS blobs upstream).
NANO = dataclasses.replace(TURBO, variant="nano", t3="t3_nano_v1.safetensors", repo_id=NANO_REPO_ID)

LAYOUTS: dict[str, CheckpointLayout] = {"english": ENGLISH, "multilingual": MULTILINGUAL, "turbo": TURBO, "nano": NANO}
