"""T3's GPT-2 backbone (Turbo: GPT-2 medium, Nano: GPT-2 small), with Hugging Face's tensor names.

Like the Llama backbone it runs on embeddings T3 builds itself; unlike it, GPT-2 adds its own absolute position
table (`wpe`) to them, counting from 0 over the whole sequence (conditioning prefix included) and on through the KV
cache, as `GPT2Model` does when no `position_ids` are given. `wte` is in the weight files but never used: the
reference deletes it after loading. Projections are HF `Conv1D`s, whose weights are stored [in, out].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import T3Config
from .llama import KVCache


class Conv1D(nn.Module):
    """A linear layer with its weight stored transposed ([in, out]), as GPT-2's checkpoints hold it."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class GPT2Attention(nn.Module):
    def __init__(self, config: T3Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.c_attn = Conv1D(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        b, t, hidden = x.shape
        q, k, v = self.c_attn(x).split(hidden, dim=-1)
        q, k, v = (y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for y in (q, k, v))
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.write(self.layer_idx, k, v)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        elif t == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            rows = torch.arange(t, device=x.device)[:, None] + past
            mask = torch.arange(past + t, device=x.device)[None, :] <= rows
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, hidden))


class GPT2MLP(nn.Module):
    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.hidden_size, config.intermediate_size)
        self.c_proj = Conv1D(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # "gelu_new"


class GPT2Block(nn.Module):
    def __init__(self, config: T3Config, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT2Backbone(nn.Module):
    """Blocks over input embeddings plus `wpe`; returns the final-LayerNorm hidden states."""

    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.backbone_vocab_size, config.hidden_size)  # unused; in the files
        self.wpe = nn.Embedding(config.n_positions, config.hidden_size)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def new_kv_cache(self, batch_size: int, capacity: int) -> KVCache:
        ref = self.ln_f.weight
        return KVCache(self.config, batch_size, capacity, device=ref.device, dtype=ref.dtype)

    def forward(self, inputs_embeds: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        t = inputs_embeds.shape[1]
        start = kv_cache.start(inputs_embeds) if kv_cache is not None else 0
        if start + t > self.config.n_positions:
            raise ValueError(f"sequence of {start + t} positions is longer than GPT-2's {self.config.n_positions}")
        positions = torch.arange(start, start + t, device=inputs_embeds.device)
        h = inputs_embeds + self.wpe(positions)
        for block in self.h:
            h = block(h, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(t)
        return self.ln_f(h)
