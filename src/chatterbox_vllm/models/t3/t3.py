"""T3: a transformer that reads [conditioning | text | speech] embeddings and predicts S3 speech tokens (25 Hz).

The backbone is a Llama (English, multilingual: T3's own learned position tables, RoPE) or GPT-2 (Turbo, Nano:
GPT-2's `wpe` only, a speech head with bias, one start-of-speech token, no CFG row).

The module has two halves that the vLLM model reuses separately:
* prefix/embedding construction (`prepare_conditioning`, `text_embeds`, `speech_embeds`, `prefill_embeds`): turn a
  voice, text tokens and speech tokens into backbone inputs, with T3's own learned absolute position tables;
* the backbone (`tfmr`, RoPE over the whole sequence) and the output heads (`speech_logits`).

Tensor names equal the reference's `state_dict()` (`t3_cfg.safetensors`, `t3_mtl23ls_v2.safetensors`,
`t3_turbo_v1.safetensors`, `t3_nano_v1.safetensors`), including the ones the reference never uses at inference
(`tfmr.embed_tokens.weight` / `tfmr.wte.weight`, `text_head.weight`).
"""

from __future__ import annotations

import torch
from torch import nn

from .cond_encoder import T3Cond, T3CondEnc
from .config import T3Config
from .gpt2 import GPT2Backbone
from .llama import KVCache, LlamaBackbone

# The torch module of each T3 backbone kind (`T3Config.backbone`).
BACKBONE_MODULES: dict[str, type[LlamaBackbone] | type[GPT2Backbone]] = {"llama": LlamaBackbone, "gpt2": GPT2Backbone}


class LearnedPositionEmbeddings(nn.Module):
    """Absolute position table (`<name>.emb.weight`)."""

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_positions, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.emb(positions)

    def first(self, length: int) -> torch.Tensor:
        """Rows 0..length-1: [length, dim]."""
        return self.emb(torch.arange(length, device=self.emb.weight.device))


class T3(nn.Module):
    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.config = config
        # Registration order = the reference's state_dict order (the manifests list tensors in that order).
        self.tfmr: LlamaBackbone | GPT2Backbone = BACKBONE_MODULES[config.backbone](config)
        self.cond_enc = T3CondEnc(config)
        self.text_emb = nn.Embedding(config.text_tokens_dict_size, config.hidden_size)
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)
        self.text_pos_emb: LearnedPositionEmbeddings | None = None
        self.speech_pos_emb: LearnedPositionEmbeddings | None = None
        if config.learned_pos_emb:
            self.text_pos_emb = LearnedPositionEmbeddings(config.text_pos_emb_size, config.hidden_size)
            self.speech_pos_emb = LearnedPositionEmbeddings(config.speech_pos_emb_size, config.hidden_size)
        self.text_head = nn.Linear(config.hidden_size, config.text_tokens_dict_size, bias=False)  # unused
        self.speech_head = nn.Linear(config.hidden_size, config.speech_tokens_dict_size, bias=config.speech_head_bias)

    @property
    def device(self) -> torch.device:
        return self.speech_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.speech_head.weight.dtype

    def reset_non_persistent_buffers(self) -> None:
        """Recompute buffers that are not in the weight files (after `to_empty`); GPT-2 has none."""
        if isinstance(self.tfmr, LlamaBackbone):
            self.tfmr.rotary_emb.reset_parameters()

    # ------------------------------------------------------------------------------------- embeddings
    def prepare_conditioning(self, cond: T3Cond) -> torch.Tensor:
        """The conditioning prefix, [1, len_cond (34; 376 for GPT-2 T3 with a full prompt), hidden]."""
        prompt_embeds = None
        tokens = cond.cond_prompt_speech_tokens
        if tokens is not None:
            tokens = torch.atleast_2d(tokens).to(device=self.device, dtype=torch.long)
            prompt_embeds = self.speech_emb(tokens)
            if self.speech_pos_emb is not None:
                if tokens.shape[1] > self.config.speech_pos_emb_size:
                    raise ValueError(f"speech prompt of {tokens.shape[1]} tokens is longer than the position table")
                prompt_embeds = prompt_embeds + self.speech_pos_emb.first(tokens.shape[1])
        speaker = cond.speaker_emb.to(device=self.device, dtype=self.dtype)
        emotion = cond.emotion_adv.to(device=self.device, dtype=self.dtype) if cond.emotion_adv is not None else None
        return self.cond_enc(speaker, prompt_embeds, emotion)

    def text_embeds(self, text_tokens: torch.Tensor, *, zero_tokens: bool = False) -> torch.Tensor:
        """text_tokens [B, L] -> token + position embeddings [B, L, hidden].

        `zero_tokens` gives the CFG unconditional row: the token embedding is zeroed *before* the position embedding
        is added, so the row carries positions only (as in the reference's `text_emb[1].zero_()`).
        """
        length = text_tokens.shape[-1]
        tok = self.text_emb(text_tokens)
        if zero_tokens:
            tok = torch.zeros_like(tok)
        if self.text_pos_emb is None:
            return tok
        if length > self.config.text_pos_emb_size:
            raise ValueError(f"text of {length} tokens is longer than T3's {self.config.text_pos_emb_size} positions")
        return tok + self.text_pos_emb.first(length)

    def speech_embeds(self, speech_tokens: torch.Tensor, positions: torch.Tensor | int) -> torch.Tensor:
        """speech_tokens [B, T] at speech positions `positions` ([T], or the first position as an int); GPT-2 T3
        ignores the positions (its backbone adds its own)."""
        if self.speech_pos_emb is None:
            return self.speech_emb(speech_tokens)
        if isinstance(positions, int):
            last = positions + speech_tokens.shape[-1] - 1
            if last >= self.config.speech_pos_emb_size:
                raise ValueError(f"speech position {last} is beyond T3's {self.config.speech_pos_emb_size} positions")
            positions = torch.arange(positions, last + 1, device=speech_tokens.device)
        return self.speech_emb(speech_tokens) + self.speech_pos_emb(positions)

    def prefill_embeds(self, cond: T3Cond, text_tokens: torch.Tensor, *, cfg: bool) -> torch.Tensor:
        """Backbone input before the first sampled token: [cond | text | BOS | BOS], [B, len_cond + L + 2, hidden].

        Row 0 is conditional; with `cfg` a second, unconditional row follows (same conditioning, text embeddings
        zeroed). The start-of-speech token appears twice, both times at speech position 0: the reference's
        `prepare_input_embeds` adds one and `inference` appends another. GPT-2 T3 (`inference_turbo`) has one
        start-of-speech token and never runs CFG.
        """
        text_tokens = torch.atleast_2d(text_tokens).to(device=self.device, dtype=torch.long)
        if text_tokens.shape[0] != 1:
            raise ValueError("prefill_embeds takes the text of one request ([L] or [1, L])")
        if cfg and not self.config.supports_cfg:
            raise ValueError("this T3 (GPT-2 backbone: Turbo, Nano) has no classifier-free guidance")
        cond_emb = self.prepare_conditioning(cond)
        rows = [self.text_embeds(text_tokens)]
        if cfg:
            rows.append(self.text_embeds(text_tokens, zero_tokens=True))
        text = torch.cat(rows, dim=0)
        batch = text.shape[0]
        bos = torch.full((1, 1), self.config.start_speech_token, device=self.device, dtype=torch.long)
        bos_emb = self.speech_embeds(bos, 0)
        starts = self.config.speech_start_rows
        return torch.cat(
            (cond_emb.expand(batch, -1, -1), text, bos_emb.expand(batch, starts, -1)),
            dim=1,
        )

    # --------------------------------------------------------------------------------------- backbone
    def new_kv_cache(self, batch_size: int, capacity: int) -> KVCache:
        return self.tfmr.new_kv_cache(batch_size, capacity)

    def forward(self, inputs_embeds: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, T, hidden]; with `kv_cache`, positions continue after the cached ones."""
        return self.tfmr(inputs_embeds, kv_cache)

    def speech_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.speech_head(hidden)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.text_head(hidden)
