"""File names of the published Chatterbox checkpoints (Hugging Face `ResembleAI/chatterbox`).

The names are the real ones so that a directory downloaded from the hub and a random checkpoint made by
`chatterbox-vllm make-checkpoint` load through exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Variant = Literal["english", "multilingual"]
VARIANTS: tuple[Variant, ...] = ("english", "multilingual")

HF_REPO_ID = "ResembleAI/chatterbox"

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

    @property
    def files(self) -> tuple[str, ...]:
        names = (self.voice_encoder, self.t3, self.s3gen, self.conds, self.text_tokenizer)
        return names + ((self.cangjie_table,) if self.cangjie_table else ())


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

LAYOUTS: dict[str, CheckpointLayout] = {"english": ENGLISH, "multilingual": MULTILINGUAL}
