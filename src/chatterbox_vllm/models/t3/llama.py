"""T3's Llama backbone, written out so that it runs without `transformers` and keeps Hugging Face's tensor names.

T3 feeds the backbone embeddings it builds itself (conditioning, text and speech tokens), so `embed_tokens` is never
used; it exists only because the weight files hold it. RoPE positions run 0..N-1 over the whole sequence and
continue through the KV cache, exactly as `LlamaModel` does when no `position_ids` are given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import T3Config


def llama3_inv_freq(config: T3Config, device: torch.device | str | None = None) -> torch.Tensor:
    """RoPE inverse frequencies with llama3 scaling, with the op order of HF `_compute_llama3_parameters`.

    float32 throughout; the result is bit-identical to `LlamaRotaryEmbedding.inv_freq`.
    """
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)

    factor = config.rope_factor
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    context = config.rope_original_max_position_embeddings
    low_freq_wavelen = context / low
    high_freq_wavelen = context / high

    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed down by `factor`; short ones are kept; the band between is interpolated.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    interpolated = (1 - smooth) * scaled / factor + smooth * scaled
    in_band = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(in_band, interpolated, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for absolute positions (computed in float32, like HF)."""

    inv_freq: torch.Tensor

    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.config = config
        # Not in any weight file: derived from the config (HF registers it non-persistent too).
        self.register_buffer("inv_freq", llama3_inv_freq(config), persistent=False)

    def reset_parameters(self) -> None:
        """Recompute `inv_freq` (needed after building on the meta device and materialising with `to_empty`)."""
        self.inv_freq = llama3_inv_freq(self.config, device=self.inv_freq.device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] int -> cos, sin of shape [T, head_dim]."""
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq.to(torch.float32)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D]."""
    return (x * cos) + (_rotate_half(x) * sin)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class KVCache:
    """Per-layer key/value buffers of a batch of sequences that all have the same length.

    Buffers are preallocated for `capacity` positions (and doubled when exceeded), so a decode step writes one
    slot instead of re-concatenating the whole history.
    """

    def __init__(
        self,
        config: T3Config,
        batch_size: int,
        capacity: int,
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, config.num_key_value_heads, max(1, capacity), config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, new_tokens: int) -> None:
        needed = self.length + new_tokens
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = old.new_zeros(old.shape[0], old.shape[1], capacity, old.shape[3])
                grown[:, :, : self.length] = old[:, :, : self.length]
                store[i] = grown

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions of one layer; returns keys/values of all positions so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def start(self, inputs_embeds: torch.Tensor) -> int:
        """Make room for `inputs_embeds` ([B, T, hidden]) and return the position its first row takes."""
        if self.batch_size != inputs_embeds.shape[0]:
            raise ValueError(f"KV cache holds {self.batch_size} rows, input has {inputs_embeds.shape[0]}")
        self.reserve(inputs_embeds.shape[1])
        return self.length


class LlamaAttention(nn.Module):
    def __init__(self, config: T3Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)

        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.write(self.layer_idx, k, v)

        gqa = self.num_kv_heads != self.num_heads
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=gqa)
        elif t == 1:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        else:
            # New positions after a cached prefix: query i sees keys 0..past+i.
            rows = torch.arange(t, device=x.device)[:, None] + past
            mask = torch.arange(past + t, device=x.device)[None, :] <= rows
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: T3Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBackbone(nn.Module):
    """Decoder stack over input embeddings; returns the final-norm hidden states (HF `hidden_states[-1]`)."""

    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.backbone_vocab_size, config.hidden_size)  # unused; in the files
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def new_kv_cache(self, batch_size: int, capacity: int) -> KVCache:
        ref = self.norm.weight
        return KVCache(self.config, batch_size, capacity, device=ref.device, dtype=ref.dtype)

    def forward(self, inputs_embeds: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """inputs_embeds: [B, T, hidden]. With a cache, positions continue after the cached ones."""
        t = inputs_embeds.shape[1]
        start = kv_cache.start(inputs_embeds) if kv_cache is not None else 0
        positions = torch.arange(start, start + t, device=inputs_embeds.device)
        cos, sin = self.rotary_emb(positions, inputs_embeds.dtype)
        h = inputs_embeds
        for layer in self.layers:
            h = layer(h, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(t)
        return self.norm(h)
