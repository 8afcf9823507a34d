"""S3Gen's token encoder: a Conformer that turns 25 Hz token embeddings into 50 Hz mel-rate features.

CosyVoice 2's `UpsampleConformerEncoder` (ESPnet/WeNet lineage) as chatterbox 0.1.7 configures it: a linear input
layer with relative positional encoding, a small causal-looking-ahead conv layer, 6 Conformer blocks (relative
position self-attention + Swish feed-forward, pre-norm, no convolution module, no macaron FFN), a x2 nearest
upsample + conv, a second linear input layer, 4 more blocks and a final LayerNorm. There is no chunking at
inference, so every frame attends to every unpadded frame.

Module names follow the reference exactly (they are the `flow.encoder.*` tensor names of `s3gen.safetensors`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import UpsampleEncoderConfig


def non_pad_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """`[B, T]` bool, True on the first `lengths[b]` positions (lengths may be float, as the reference casts them)."""
    lengths = lengths.long()
    if max_len is None:
        max_len = int(lengths.max().item())
    positions = torch.arange(max_len, dtype=torch.int64, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(-1)


def relative_position_table(length: int, d_model: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ESPnet's relative sinusoidal encoding `[1, 2*length - 1, d_model]` for relative offsets length-1 ... -(length-1).

    Row k encodes offset `length - 1 - k` (positive offsets, keys to the left, come first). Computed in float32
    exactly as the reference's precomputed table is (each entry depends only on its own offset), then cast.
    """
    position = torch.arange(0, length, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model)
    )
    positive = torch.zeros(length, d_model, device=device)
    negative = torch.zeros(length, d_model, device=device)
    positive[:, 0::2] = torch.sin(position * div_term)
    positive[:, 1::2] = torch.cos(position * div_term)
    negative[:, 0::2] = torch.sin(-1 * position * div_term)
    negative[:, 1::2] = torch.cos(-1 * position * div_term)
    table = torch.cat([torch.flip(positive, [0]), negative[1:]], dim=0).unsqueeze(0)
    return table.to(dtype=dtype)


class LinearInput(nn.Module):
    """Linear + LayerNorm, scaled by sqrt(d_model); also returns the relative position table for the length."""

    def __init__(self, in_dim: int, d_model: int):
        super().__init__()
        # Sequential keeps the reference names `out.0` (Linear) and `out.1` (LayerNorm); its Dropout is omitted.
        self.out = nn.Sequential(nn.Linear(in_dim, d_model), nn.LayerNorm(d_model, eps=1e-5))
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.out(x) * self.xscale
        pos_emb = relative_position_table(x.size(1), self.d_model, device=x.device, dtype=x.dtype)
        return x, pos_emb


class RelPositionMultiHeadedAttention(nn.Module):
    """Transformer-XL style self-attention: content score (q + u)·k plus position score (q + v)·W_pos(p).

    Run through `F.scaled_dot_product_attention` with the position score as its additive mask: the content product,
    scale, softmax and value product are one fused kernel on GPUs instead of five.
    """

    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"attention width {n_feat} is not a multiple of {n_head} heads")
        self.h = n_head
        self.d_k = n_feat // n_head
        # Registered first so the state_dict order is the reference's (own parameters precede submodules').
        self.pos_bias_u = nn.Parameter(torch.empty(n_head, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(n_head, self.d_k))
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    @staticmethod
    def rel_shift(scores: torch.Tensor) -> torch.Tensor:
        """`[B, H, T, 2T-1]` scores over table rows -> `[B, H, T, T]` over keys: out[i, j] = in[i, T-1-i+j]."""
        b, h, t, _ = scores.shape
        scores = scores.contiguous()
        s0, s1, s2, s3 = scores.stride()
        return scores.as_strided((b, h, t, t), (s0, s1, s2 - s3, s3), scores.storage_offset() + (t - 1) * s3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x `[B, T, D]`; mask `[B, 1, T]` (bool, keys to attend); pos_emb `[1, 2T-1, D]`."""
        b = x.size(0)
        q = self.linear_q(x).view(b, -1, self.h, self.d_k)  # [B, T, H, d_k]
        k = self.linear_k(x).view(b, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, -1, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)

        # The position score enters fused attention as an additive bias (it depends on the query, so it is its own
        # product); scaled as SDPA scales the content score, so softmax((content + position) / sqrt(d_k)) is kept.
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        if position.size(-1) != k.size(-2):
            position = self.rel_shift(position)
        # Padded keys get -inf. A row with no key at all (never a real request) attends to every key instead, so
        # it stays finite rather than NaN (its output is masked downstream).
        keys = mask.unsqueeze(1)[..., : k.size(-2)]
        keys = keys | ~keys.any(dim=-1, keepdim=True)
        bias = (position / math.sqrt(self.d_k)).masked_fill(~keys, -float("inf"))
        out = F.scaled_dot_product_attention((q + self.pos_bias_u).transpose(1, 2), k, v, attn_mask=bias)
        out = out.transpose(1, 2).contiguous().view(b, -1, self.h * self.d_k)
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(d_model, hidden)
        self.w_2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + FFN(LN(x)). (The reference's Conformer without conv module.)"""

    def __init__(self, d_model: int, n_head: int, hidden: int):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(n_head, d_model)
        self.feed_forward = PositionwiseFeedForward(d_model, hidden)
        self.norm_ff = nn.LayerNorm(d_model, eps=1e-12)
        self.norm_mha = nn.LayerNorm(d_model, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), mask, pos_emb)
        return x + self.feed_forward(self.norm_ff(x))


class PreLookaheadLayer(nn.Module):
    """Residual conv pair: the first sees `lookahead` future frames, the second 2 past frames."""

    def __init__(self, channels: int, lookahead: int):
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, C]` -> `[B, T, C]`."""
        y = F.pad(x.transpose(1, 2).contiguous(), (0, self.lookahead))
        y = F.leaky_relu(self.conv1(y))
        y = self.conv2(F.pad(y, (2, 0)))
        return y.transpose(1, 2).contiguous() + x


class Upsample1D(nn.Module):
    """Nearest-neighbour x`stride` in time, then a causal (left-padded) conv of width 2*stride + 1."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, C, T]` -> `[B, C, stride*T]`, lengths scaled alike."""
        y = F.interpolate(x, scale_factor=float(self.stride), mode="nearest")
        y = self.conv(F.pad(y, (self.stride * 2, 0)))
        return y, lengths * self.stride


class UpsampleConformerEncoder(nn.Module):
    def __init__(self, config: UpsampleEncoderConfig = UpsampleEncoderConfig()):
        super().__init__()
        self.config = config
        d = config.output_size

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(ConformerBlock(d, config.attention_heads, config.linear_units) for _ in range(n))

        self.embed = LinearInput(config.input_size, d)
        self.after_norm = nn.LayerNorm(d, eps=1e-5)
        self.pre_lookahead_layer = PreLookaheadLayer(d, config.pre_lookahead_len)
        self.encoders = blocks(config.num_blocks)
        self.up_layer = Upsample1D(d, config.upsample_stride)
        self.up_embed = LinearInput(d, d)
        self.up_encoders = blocks(config.num_up_blocks)

    def output_size(self) -> int:
        return self.config.output_size

    def forward(self, xs: torch.Tensor, xs_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xs `[B, T, input_size]`, lengths `[B]` -> features `[B, stride*T, D]` and their mask `[B, 1, stride*T]`."""
        mask = non_pad_mask(xs_lens, xs.size(1)).unsqueeze(1)
        xs, pos_emb = self.embed(xs)
        # Zero the padded frames, so the lookahead conv sees past a row's end what it sees unpadded (a row of a
        # padded batch then encodes as it does alone); a no-op without padding, as in the reference's inference.
        xs = self.pre_lookahead_layer(xs * mask.transpose(1, 2).to(xs.dtype))
        for block in self.encoders:
            xs = block(xs, mask, pos_emb)

        xs, xs_lens = self.up_layer(xs.transpose(1, 2).contiguous(), xs_lens)
        xs = xs.transpose(1, 2).contiguous()
        mask = non_pad_mask(xs_lens, xs.size(1)).unsqueeze(1)
        xs, pos_emb = self.up_embed(xs)
        for block in self.up_encoders:
            xs = block(xs, mask, pos_emb)
        return self.after_norm(xs), mask
