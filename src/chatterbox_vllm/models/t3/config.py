"""Dimensions and token ids of T3, Chatterbox's text-to-speech-token transformer.

Defaults are the published model (`Llama_520M` backbone, English text vocabulary). The multilingual model differs
only in its text vocabulary (2454 instead of 704 ids). Turbo and Nano (`ResembleAI/chatterbox-turbo`, `-nano`) swap
the backbone for GPT-2 (medium: 24 layers x 1024; small: 12 x 768) with its own absolute positions (`wpe`), read
GPT-2 text tokens (50,257 + 19 paralinguistic tags), keep the 375-token speech prompt as it is (no perceiver) and
have no emotion input. Published checkpoints carry no config, so these numbers are the contract with the weight
files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

ENGLISH_TEXT_VOCAB = 704
MULTILINGUAL_TEXT_VOCAB = 2454
GPT2_TEXT_VOCAB = 50_276  # GPT-2's 50,257 ids + 19 paralinguistic tags (Turbo, Nano)

Backbone = Literal["llama", "gpt2"]


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

    # ---------------------------------------- backbone family (GPT-2 for Turbo and Nano)
    backbone: Backbone = "llama"
    # T3's own learned text/speech position tables (Llama T3); GPT-2 T3 relies on the backbone's `wpe` alone.
    learned_pos_emb: bool = True
    layer_norm_epsilon: float = 1e-5  # GPT-2's LayerNorms
    n_positions: int = 8196  # GPT-2's absolute position table: the longest sequence, prefix included

    # ------------------------------------------------------------------ derived
    @property
    def supports_cfg(self) -> bool:
        """Turbo and Nano were distilled without classifier-free guidance: their reference never runs it."""
        return self.backbone == "llama"

    @property
    def wraps_text(self) -> bool:
        """Llama T3 reads text between its start/stop text tokens; GPT-2 T3 reads GPT-2's ids as they are."""
        return self.backbone == "llama"

    @property
    def speech_start_rows(self) -> int:
        """Start-of-speech embeddings after the text: two in Llama T3 (the reference's quirk), one in GPT-2 T3."""
        return 2 if self.backbone == "llama" else 1

    @property
    def backbone_positions(self) -> bool:
        """The backbone's own position table (GPT-2's `wpe`) spans the whole sequence, prefix included, and bounds
        both text and speech; Llama T3 bounds each by its own learned table."""
        return self.backbone == "gpt2"

    @property
    def gated_mlp(self) -> bool:
        """Llama's MLP has three matrices (gate, up, down); GPT-2's two."""
        return self.backbone == "llama"

    @property
    def speech_head_bias(self) -> bool:
        return self.backbone == "gpt2"

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
    def english(cls) -> T3Config:
        return cls(text_tokens_dict_size=ENGLISH_TEXT_VOCAB)

    @classmethod
    def multilingual(cls) -> T3Config:
        return cls(text_tokens_dict_size=MULTILINGUAL_TEXT_VOCAB)

    @classmethod
    def turbo(cls) -> T3Config:
        """`GPT2_medium` as the reference's `tts_turbo.py` configures it (`t3_turbo_v1.safetensors`)."""
        return cls(
            text_tokens_dict_size=GPT2_TEXT_VOCAB,
            speech_tokens_dict_size=6563,
            speech_cond_prompt_len=375,
            use_perceiver_resampler=False,
            emotion_adv=False,
            backbone="gpt2",
            learned_pos_emb=False,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            head_dim=64,
            intermediate_size=4096,
            backbone_vocab_size=GPT2_TEXT_VOCAB,
        )

    @classmethod
    def nano(cls) -> T3Config:
        """`GPT2_small` (upstream chatterbox since 5de7a54, `t3_nano_v1.safetensors`): Turbo at 12 x 768."""
        return dataclasses.replace(
            cls.turbo(), hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
            intermediate_size=3072,
        )  # fmt: skip

    @classmethod
    def for_variant(cls, variant: str) -> T3Config:
        """The published T3 of a registered model family (`families`)."""
        from ...families import get

        try:
            return get(variant).t3_config()
        except ValueError as exc:
            raise ValueError(f"unknown T3 variant {variant!r}: {exc}") from None

    @classmethod
    def tiny(cls, variant: str = "english") -> T3Config:
        """A registered family's T3 made tiny (`shrink`)."""
        return cls.shrink(cls.for_variant(variant))

    @classmethod
    def shrink(cls, config: T3Config) -> T3Config:
        """Same architecture, vocabularies, token ids, position tables and prompt/query lengths; small widths."""
        return dataclasses.replace(
            config,
            hidden_size=64,
            num_hidden_layers=2,
            # head_dim 32: the smallest head size vLLM's CPU attention backend accepts.
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            intermediate_size=128 if config.gated_mlp else 256,  # GPT-2's MLP is 4 x hidden
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> T3Config:
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
        if self.backbone not in ("llama", "gpt2"):
            raise ValueError(f"T3Config: unknown backbone {self.backbone!r} (expected 'llama' or 'gpt2')")
        if self.backbone == "gpt2" and (
            self.num_attention_heads * self.head_dim != self.hidden_size
            or self.num_key_value_heads != self.num_attention_heads
        ):
            raise ValueError("T3Config: a GPT-2 backbone has hidden_size = heads x head_dim and no grouped KV heads")

    def hf_gpt2_config(self) -> dict[str, Any]:
        """The backbone as a Hugging Face `GPT2Config` dict (what vLLM's GPT-2 layers are built from)."""
        return {
            "model_type": "gpt2",
            "vocab_size": self.backbone_vocab_size,
            "n_embd": self.hidden_size,
            "n_layer": self.num_hidden_layers,
            "n_head": self.num_attention_heads,
            "n_inner": self.intermediate_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": False,
        }

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
