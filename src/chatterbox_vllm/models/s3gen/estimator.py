"""The flow-matching vector field of S3Gen (`flow.decoder.estimator`): CosyVoice 2's causal `ConditionalDecoder`.

A 1-D U-Net over time whose input is `[x | mu | spks | cond]` stacked on the channel axis (4 x 80 = 320 channels)
and whose output is the velocity `dx/dt` `[B, 80, T]`. Every stage is a causal resnet block (conditioned on the
flow time through an MLP) followed by plain pre-norm transformer blocks (self-attention over unpadded frames, GELU
feed-forward). The reference takes those transformer blocks and the timestep MLP from diffusers 0.29; they are
written out here with the same parameter names (`attn1.to_q`, `ff.net.0.proj`, `time_mlp.linear_1`, ...).

Masked (padded) frames are zeroed before every convolution and at the output, so padding never leaks into real
frames; the attention gives padded keys a -1e10 bias, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import EstimatorConfig

ATTENTION_MASK_BIAS = -1.0e10  # the reference's additive bias for padded keys (not -inf: fully padded rows stay finite)


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding `[B, dim]` of flow times `t` `[B]` in [0, 1]: sin half, then cos half.

    Frequencies `exp(-i * ln(10000) / (dim/2 - 1))`, times scaled by 1000; float32 op order as the reference.
    """
    if t.dim() < 1:
        t = t.unsqueeze(0)
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -step)
    angles = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear (diffusers' `TimestepEmbedding` with act_fn="silu")."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sample)))


class CausalConv1d(nn.Conv1d):
    """Conv1d that sees only the current and past frames (left zero padding of kernel_size - 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.left_pad = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a `[B, C, T]` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class CausalBlock1D(nn.Module):
    """Masked causal conv3 -> LayerNorm over channels -> Mish, masked again."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        # Indices 0 and 2 carry the weights, as in the reference's Sequential(conv, transpose, norm, transpose, mish).
        self.block = nn.Sequential(
            CausalConv1d(dim, dim_out, 3), nn.Identity(), ChannelLayerNorm(dim_out), nn.Identity(), nn.Mish()
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class CausalResnetBlock1D(nn.Module):
    """Two causal blocks with the time embedding added in between, plus a 1x1 residual projection."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask)
        h = h + self.mlp(time_emb).unsqueeze(-1)
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


class Attention(nn.Module):
    """Multi-head self-attention with an additive key bias (diffusers' `Attention` + `AttnProcessor2_0`).

    q/k/v projections without bias to `heads * head_dim`, SDPA with the default 1/sqrt(head_dim) scale, then
    `to_out.0` (with bias). `to_out.1` is the reference's dropout slot (identity at inference).
    """

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.inner = inner
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Identity()])

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """x `[B, T, dim]`; key_bias `[B, 1, T]` (0 for real frames, -1e10 for padding)."""
        b = x.size(0)
        q = self.to_q(x).view(b, -1, self.heads, self.to_q.out_features // self.heads).transpose(1, 2)
        k = self.to_k(x).view(b, -1, self.heads, self.to_k.out_features // self.heads).transpose(1, 2)
        v = self.to_v(x).view(b, -1, self.heads, self.to_v.out_features // self.heads).transpose(1, 2)
        # One bias row per (batch, head), materialised as the reference does ([B*H, 1, T] viewed as [B, H, 1, T]).
        bias = key_bias.repeat_interleave(self.heads, dim=0).view(b, self.heads, -1, key_bias.size(-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, self.inner).to(q.dtype)
        return self.to_out[1](self.to_out[0](out))


class GELUProjection(nn.Module):
    """Linear then exact GELU (diffusers' `GELU` activation module)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """`net.0` = Linear + GELU to 4 x dim, `net.1` = dropout slot, `net.2` = Linear back."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + FF(LN(x)) (`norm1`/`attn1`, `norm3`/`ff`; the reference has no cross-attention)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x), key_bias) + x
        return self.ff(self.norm3(x)) + x


class Downsample1D(nn.Module):
    """Strided conv (x1/2 in time); only between levels of a multi-level U-Net (not in the published one)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    """Transposed conv (x2 in time); only between levels of a multi-level U-Net (not in the published one)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _transformer_stack(config: EstimatorConfig, dim: int) -> nn.ModuleList:
    return nn.ModuleList(
        BasicTransformerBlock(dim, config.num_heads, config.attention_head_dim) for _ in range(config.n_blocks)
    )


def _stages(blocks: nn.ModuleList) -> Iterator[tuple[Any, ...]]:
    """Each U-Net stage's modules in order (resnet, transformer stack, then the down/up sampler if any)."""
    for stage in blocks:
        yield tuple(cast(nn.ModuleList, stage))


def _key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[B, 1, T]` 0/1 mask -> additive attention bias (0 where 1, -1e10 where 0)."""
    return (1.0 - (mask == 1).to(dtype)) * ATTENTION_MASK_BIAS


class ConditionalDecoder(nn.Module):
    """Velocity `[B, 80, T]` of the flow at time t, given x, mu, the speaker vector and the prompt cond.

    meanflow: the mean-flow variant (Turbo, Nano) predicts the average velocity over [t, r], so it also embeds the
    step's end time r with the same sinusoid + MLP and mixes both embeddings with `time_embed_mixer`
    (`Linear(2 D, D, bias=False)` over `[emb(t) | emb(r)]`, registered last, as the reference does).
    """

    def __init__(self, config: EstimatorConfig = EstimatorConfig(), meanflow: bool = False):
        super().__init__()
        self.config = config
        self.meanflow = meanflow
        channels = config.channels
        temb = config.time_embed_dim
        self.time_mlp = TimestepEmbedding(config.in_channels, temb)

        self.down_blocks = nn.ModuleList()
        out_ch = config.in_channels
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            last = i == len(channels) - 1
            down = CausalConv1d(out_ch, out_ch, 3) if last else Downsample1D(out_ch)
            self.down_blocks.append(
                nn.ModuleList([CausalResnetBlock1D(in_ch, out_ch, temb), _transformer_stack(config, out_ch), down])
            )

        mid = channels[-1]
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([CausalResnetBlock1D(mid, mid, temb), _transformer_stack(config, mid)])
            for _ in range(config.num_mid_blocks)
        )

        self.up_blocks = nn.ModuleList()
        up_channels = channels[::-1] + (channels[0],)
        for i in range(len(up_channels) - 1):
            in_ch, out_ch = up_channels[i] * 2, up_channels[i + 1]  # x2: the skip connection is concatenated
            last = i == len(up_channels) - 2
            up = CausalConv1d(out_ch, out_ch, 3) if last else Upsample1D(out_ch)
            self.up_blocks.append(
                nn.ModuleList([CausalResnetBlock1D(in_ch, out_ch, temb), _transformer_stack(config, out_ch), up])
            )
        self.final_block = CausalBlock1D(up_channels[-1], up_channels[-1])
        self.final_proj = nn.Conv1d(up_channels[-1], config.out_channels, 1)
        self.time_embed_mixer = nn.Linear(2 * temb, temb, bias=False) if meanflow else None

    @property
    def dtype(self) -> torch.dtype:
        return self.final_proj.weight.dtype

    def time_embedding(self, t: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        """`[len(t), time_embed_dim]`: the MLP of t's sinusoid; mean-flow: mixed with r's (same op order as the
        reference: r's sinusoid is cast to the dtype of t's MLP output)."""
        t_emb = self.time_mlp(timestep_embedding(t, self.config.in_channels).to(t.dtype))
        if self.time_embed_mixer is None:
            return t_emb
        if r is None:
            raise ValueError("the mean-flow estimator needs the step's end time r")
        r_emb = self.time_mlp(timestep_embedding(r, self.config.in_channels).to(t_emb.dtype))
        return self.time_embed_mixer(torch.cat([t_emb, r_emb], dim=1))

    @staticmethod
    def _transformers(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = _key_bias(mask, x.dtype)
        h = x.transpose(1, 2).contiguous()
        for block in blocks:
            h = block(h, bias)
        return h.transpose(1, 2).contiguous()

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x, mu, cond `[B, 80, T]`; mask `[B, 1, T]` (1 = real frame); t `[B]` or `[1]`; spks `[B, 80]`;
        r (mean-flow only, required there): the step's end time, shaped like t."""
        t_emb = self.time_embedding(t, r)

        parts = [x, mu]
        if spks is not None:
            parts.append(spks.unsqueeze(-1).expand(-1, -1, x.size(-1)))
        if cond is not None:
            parts.append(cond)
        h = torch.cat(parts, dim=1)

        skips: list[torch.Tensor] = []
        masks = [mask]
        for resnet, transformers, down in _stages(self.down_blocks):
            m = masks[-1]
            h = self._transformers(transformers, resnet(h, m, t_emb), m)
            skips.append(h)
            h = down(h * m)
            masks.append(m[:, :, ::2])
        masks.pop()  # the mask after the last level belongs to no stage (the last level does not downsample)

        m = masks[-1]
        for resnet, transformers in _stages(self.mid_blocks):
            h = self._transformers(transformers, resnet(h, m, t_emb), m)

        for resnet, transformers, up in _stages(self.up_blocks):
            m = masks.pop()
            skip = skips.pop()
            h = torch.cat([h[:, :, : skip.size(-1)], skip], dim=1)
            h = self._transformers(transformers, resnet(h, m, t_emb), m)
            h = up(h * m)
        h = self.final_block(h, m)
        return self.final_proj(h * m) * mask
