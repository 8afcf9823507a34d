"""What one Chatterbox model family is: everything that differs between English, multilingual, Turbo and Nano.

The rest of the package asks a family (`tts.family.multilingual`, `family.tail_tokens`, ...) instead of comparing
variant names, so a new family is one module that builds a `ModelFamily` and registers it (`families.register`).
Backbone conventions (prompt layout, position tables, vLLM architecture) belong to the T3 config the family's
presets build (`T3Config.backbone`), since the engines see only that config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint.layout import CheckpointLayout

if TYPE_CHECKING:
    from ..engine.base import SamplingParams
    from ..models.s3gen import S3GenConfig
    from ..models.t3 import T3Config

# A text front end: (checkpoint directory, layout, Dicta model or None) -> the loaded tokenizer.
TextFrontEnd = Callable[[Path, CheckpointLayout, "str | None"], Any]


@dataclass(frozen=True)
class RandomRecipe:
    """How `random_checkpoint` writes a family's small files: the built-in voice's prompt lengths, the speaking pace
    a tiny checkpoint records, and the function that writes its tokenizer files ("module:function", resolved when a
    random checkpoint is written, so that the runtime never imports the generator)."""

    conds_t3_prompt_tokens: int
    conds_gen_prompt_tokens: int
    conds_gen_prompt_frames: int
    speech_tokens_per_text_token: float
    tokenizer_writer: str

    def write_tokenizer(self, layout: CheckpointLayout, out: Path) -> None:
        module, _, name = self.tokenizer_writer.partition(":")
        getattr(importlib.import_module(module), name)(layout, out)


@dataclass(frozen=True)
class ModelFamily:
    """One model family. `name` is the variant name (a registry key, /v1/models' `chatterbox-<name>`)."""

    name: str
    display_name: str  # how people call it (the web page's model list): "English", "Turbo"
    layout: CheckpointLayout
    # Model settings that name the family's published checkpoint on the hub, and its random-weight stand-in.
    hub_aliases: tuple[str, ...]
    random_model: str | None
    # Network presets: the published dimensions, and a tiny T3 of the same architecture (random checkpoints).
    t3_preset: Callable[[], T3Config]
    s3gen_preset: Callable[[], S3GenConfig]
    # S3Gen: the 2-step mean-flow decoder (Turbo, Nano) rather than the 10-step CFM with CFG.
    mean_flow: bool
    text_front_end: TextFrontEnd
    # Speaks the 23 languages (text normalised and tokenized per language); else English only.
    multilingual: bool
    # The tokenizer has the paralinguistic tags ([laugh], [sigh], ...) as tokens.
    paralinguistic_tags: bool
    # T3 samples with classifier-free guidance and min_p (else it ignores cfg_weight and min_p and takes top_k).
    uses_cfg: bool
    # The sampling defaults, with the given settings in their place.
    sampling_defaults: Callable[..., SamplingParams]
    # Request settings the model runs without (dropped, as its reference does), and those it refuses: name -> why.
    ignored_settings: tuple[str, ...]
    unsupported_settings: dict[str, str]
    # Silence tokens S3Gen decodes after T3's (the reference's `S3GEN_SIL` for Turbo/Nano).
    tail_tokens: int
    # Whether the last speech token's audio is kept (Llama T3's decodes to noise and is cut).
    keeps_last_token_audio: bool
    # Voice clips: brought to this loudness before analysis (None: as they are), and the shortest clip taken.
    voice_loudness_lufs: float | None
    min_voice_seconds: float
    random_recipe: RandomRecipe

    # ------------------------------------------------------------------ derived
    @property
    def languages(self) -> dict[str, str]:
        """Language codes and names this family speaks."""
        from ..text.languages import SUPPORTED_LANGUAGES

        return dict(SUPPORTED_LANGUAGES) if self.multilingual else {"en": SUPPORTED_LANGUAGES["en"]}

    @property
    def t3_backbone(self) -> str:
        """The T3 backbone kind ("llama", "gpt2"): torch module, vLLM architecture and logits processor follow it."""
        return self.t3_preset().backbone

    def t3_config(self, size: str = "full") -> T3Config:
        """T3's dimensions: published ("full") or tiny (same architecture, small widths)."""
        from ..models.t3 import T3Config

        preset = self.t3_preset()
        return T3Config.shrink(preset) if size == "tiny" else preset

    def s3gen_config(self, size: str = "full") -> S3GenConfig:
        from ..models.s3gen import S3GenConfig

        return S3GenConfig.tiny(meanflow=self.mean_flow) if size == "tiny" else self.s3gen_preset()

    def load_text_front_end(self, directory: Path, dicta_model: str | None = None) -> Any:
        return self.text_front_end(directory, self.layout, dicta_model)
