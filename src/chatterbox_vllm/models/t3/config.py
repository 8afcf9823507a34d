"""Dimensions and token ids of T3, Chatterbox's text-to-speech-token Llama.

Defaults are the published model (`Llama_520M` backbone, English text vocabulary). The multilingual model differs
only in its text vocabulary (2454 instead of 704 ids). Published checkpoints carry no config, so these numbers are
the contract with the weight files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ENGLISH_TEXT_VOCAB = 704
MULTILINGUAL_TEXT_VOCAB = 2454


@dataclass(frozen=True)
class T3Config:
    # ------------------------------------------------------------------ tokens
    text_tokens_dict_size: int = ENGLISH_TEXT_VOCAB
    start_text_token: int = 255
    stop_text_token: int = 0
    speech_tokens_dict_size: int = 8194
    start_speech_token: int = 6561
    stop_speech_token: int = 6562
    # Learned absolute position tables hold max + 2 (text) and max + 4 (speech) rows.
    max_text_tokens: int = 2048
    max_speech_tokens: int = 4096

    # ------------------------------------------------------------ conditioning
    speaker_embed_size: int = 256
    speech_cond_prompt_len: int = 150
    use_perceiver_resampler: bool = True
    perceiver_query_tokens: int = 32
    perceiver_heads: int = 4
    emotion_adv: bool = True

    # -------------------------------------------------- Llama backbone (520M)
    hidden_size: int = 1024
    num_hidden_layers: int = 30
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 64
    intermediate_size: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    # llama3 rope scaling ("rope_type": "llama3").
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    max_position_embeddings: int = 131_072
    # Rows of the backbone's own token embedding: the file has it ([8, hidden]) but T3 never uses it.
    backbone_vocab_size: int = 8

    # ------------------------------------------------------------------ derived
    @property
    def is_multilingual(self) -> bool:
        """The reference tells the variants apart by the text vocabulary size."""
        return self.text_tokens_dict_size == MULTILINGUAL_TEXT_VOCAB

    @property
    def text_pos_emb_size(self) -> int:
        return self.max_text_tokens + 2

    @property
    def speech_pos_emb_size(self) -> int:
        return self.max_speech_tokens + 4

    @property
    def cond_len(self) -> int:
        """Rows of the conditioning prefix: speaker (1) + perceiver queries + emotion (1)."""
        prompt = self.perceiver_query_tokens if self.use_perceiver_resampler else self.speech_cond_prompt_len
        return 1 + prompt + (1 if self.emotion_adv else 0)

    # ---------------------------------------------------------------- presets
    @classmethod
    def english(cls) -> "T3Config":
        return cls(text_tokens_dict_size=ENGLISH_TEXT_VOCAB)

    @classmethod
    def multilingual(cls) -> "T3Config":
        return cls(text_tokens_dict_size=MULTILINGUAL_TEXT_VOCAB)

    @classmethod
    def for_variant(cls, variant: str) -> "T3Config":
        if variant == "english":
            return cls.english()
        if variant == "multilingual":
            return cls.multilingual()
        raise ValueError(f"unknown T3 variant {variant!r} (expected 'english' or 'multilingual')")

    @classmethod
    def tiny(cls, variant: str = "english") -> "T3Config":
        """Same architecture, vocabularies, token ids, position tables and prompt/query lengths; small widths."""
        return dataclasses.replace(
            cls.for_variant(variant),
            hidden_size=64,
            num_hidden_layers=2,
            # head_dim 32: the smallest head size vLLM's CPU attention backend accepts.
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            intermediate_size=128,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "T3Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown T3Config fields: {sorted(unknown)}")
        return cls(**d)

    def __post_init__(self) -> None:
        if self.num_attention_heads * self.head_dim <= 0:
            raise ValueError("T3Config: attention heads and head_dim must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("T3Config: num_attention_heads must be a multiple of num_key_value_heads")
        if self.hidden_size % self.perceiver_heads:
            raise ValueError("T3Config: hidden_size must be divisible by perceiver_heads")

    def hf_llama_config(self) -> dict[str, Any]:
        """The backbone as a Hugging Face `LlamaConfig` dict (what vLLM's Llama layers are built from)."""
        return {
            "model_type": "llama",
            "vocab_size": self.backbone_vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": self.rope_factor,
                "low_freq_factor": self.rope_low_freq_factor,
                "high_freq_factor": self.rope_high_freq_factor,
                "original_max_position_embeddings": self.rope_original_max_position_embeddings,
            },
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
        }
