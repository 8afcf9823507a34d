"""Perceiver resampler: squeezes the speech-prompt embeddings (up to 150 rows) into a fixed 32-row summary.

One attention block serves twice: first the learned queries attend to the prompt (cross-attention), then the result
attends to itself. Both inputs of the block go through the same LayerNorm; heads are wide (hidden / 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import T3Config


class PerceiverAttention(nn.Module):
    """Pre-norm multi-head attention with separate q/k/v projections and a residual to the query input."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q_in = self.norm(query)
        kv_in = self.norm(context)
        q = self._heads(self.to_q(q_in))
        k = self._heads(self.to_k(kv_in))
        v = self._heads(self.to_v(kv_in))
        h = F.scaled_dot_product_attention(q, k, v)
        b, _, t, _ = h.shape
        h = h.transpose(1, 2).reshape(b, t, -1)
        return query + self.proj_out(h)


class Perceiver(nn.Module):
    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.pre_attention_query = nn.Parameter(torch.empty(1, config.perceiver_query_tokens, config.hidden_size))
        self.attn = PerceiverAttention(config.hidden_size, config.perceiver_heads)
        nn.init.uniform_(self.pre_attention_query, -0.5, 0.5)

    def forward(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """prompt_embeds: [B, T, hidden] -> [B, queries, hidden]."""
        query = self.pre_attention_query.expand(prompt_embeds.shape[0], -1, -1)
        summary = self.attn(query, prompt_embeds)
        return self.attn(summary, summary)
