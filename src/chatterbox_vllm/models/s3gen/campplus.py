"""CAM++ speaker verification network (3D-Speaker / FunASR), S3Gen's x-vector extractor.

80-bin Kaldi fbank of 16 kHz audio, mean-normalised over time -> a 2-D residual front end (FCM) that halves the
frequency axis three times -> a strided TDNN layer -> three densely connected blocks of context-aware-masked TDNN
layers with transition layers -> mean+std pooling -> a 192-wide embedding. Its weights are the
`speaker_encoder.*` tensors of S3Gen's checkpoint; every BatchNorm runs in eval mode on its running statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...audio.kaldi import kaldi_fbank


@dataclass(frozen=True)
class CAMPPlusConfig:
    feat_dim: int = 80  # Kaldi fbank bins
    embedding_size: int = 192  # consumed by S3Gen's spk_embed_affine_layer
    growth_rate: int = 32
    bn_size: int = 4
    init_channels: int = 128
    fcm_channels: int = 32
    fcm_blocks: tuple[int, int] = (2, 2)
    block_layers: tuple[int, ...] = (12, 24, 16)
    block_kernel_sizes: tuple[int, ...] = (3, 3, 3)
    block_dilations: tuple[int, ...] = (1, 2, 2)
    cam_seg_len: int = 100

    @classmethod
    def tiny(cls) -> CAMPPlusConfig:
        return cls(growth_rate=8, bn_size=2, init_channels=16, fcm_channels=4, block_layers=(2, 2, 2))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CAMPPlusConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown CAMPPlusConfig fields: {sorted(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**values)


class BasicResBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """2-D front end over (frequency, time); strides only along frequency. Output `[B, C * feat_dim/8, T]`."""

    def __init__(self, channels: int, blocks: tuple[int, int], feat_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        # The reference builds both stages with blocks[0] layers (identical for its (2, 2)).
        self.layer1 = nn.Sequential(*(BasicResBlock(channels, channels, 2 if i == 0 else 1) for i in range(blocks[0])))
        self.layer2 = nn.Sequential(*(BasicResBlock(channels, channels, 2 if i == 0 else 1) for i in range(blocks[0])))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        b, c, f, t = out.shape
        return out.reshape(b, c * f, t)


def _bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm1d + ReLU under the reference's module names (`batchnorm`, `relu`)."""
    seq = nn.Sequential()
    seq.add_module("batchnorm", nn.BatchNorm1d(channels))
    seq.add_module("relu", nn.ReLU())
    return seq


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int = 1):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False
        )
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """TDNN output gated per channel by context: global mean + mean of its 100-frame segment."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, dilation: int, seg_len: int):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(
            bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // 2, 1)
        self.linear2 = nn.Conv1d(bn_channels // 2, out_channels, 1)
        self.seg_len = seg_len

    def seg_pooling(self, x: torch.Tensor) -> torch.Tensor:
        seg = F.avg_pool1d(x, kernel_size=self.seg_len, stride=self.seg_len, ceil_mode=True)
        shape = seg.shape
        seg = seg.unsqueeze(-1).expand(*shape, self.seg_len).reshape(*shape[:-1], -1)
        return seg[..., : x.shape[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_local(x)
        context = x.mean(-1, keepdim=True) + self.seg_pooling(x)
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return y * gate


class CAMDenseTDNNLayer(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int, seg_len: int
    ):
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, dilation, seg_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleList):
    """Dense connectivity: every layer's output is appended to the channels the next layer sees."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth: int,
        bn_channels: int,
        kernel_size: int,
        dilation: int,
        seg_len: int,
    ):
        super().__init__()
        for i in range(num_layers):
            layer = CAMDenseTDNNLayer(in_channels + i * growth, growth, bn_channels, kernel_size, dilation, seg_len)
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)


class DenseLayer(nn.Module):
    """1x1 conv to the embedding, then a BatchNorm without affine parameters."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(out_channels, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = self.linear(x.unsqueeze(-1)).squeeze(-1)
        else:
            x = self.linear(x)
        return self.nonlinear(x)


class CAMPPlus(nn.Module):
    def __init__(self, config: CAMPPlusConfig = CAMPPlusConfig()):
        super().__init__()
        self.config = config
        self.head = FCM(config.fcm_channels, config.fcm_blocks, config.feat_dim)
        channels = self.head.out_channels
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", TDNNLayer(channels, config.init_channels, 5, stride=2))
        channels = config.init_channels
        stages = zip(config.block_layers, config.block_kernel_sizes, config.block_dilations, strict=True)
        for i, (num_layers, kernel_size, dilation) in enumerate(stages):
            block = CAMDenseTDNNBlock(
                num_layers,
                channels,
                config.growth_rate,
                config.bn_size * config.growth_rate,
                kernel_size,
                dilation,
                config.cam_seg_len,
            )
            self.xvector.add_module(f"block{i + 1}", block)
            channels += num_layers * config.growth_rate
            self.xvector.add_module(f"transit{i + 1}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.xvector.add_module("stats", StatsPool())
        self.xvector.add_module("dense", DenseLayer(channels * 2, config.embedding_size))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Embeddings `[B, embedding_size]` of fbank features `[B, T, feat_dim]`."""
        return self.xvector(self.head(feats.permute(0, 2, 1)))

    def features(self, wav_16k: torch.Tensor) -> torch.Tensor:
        """Mean-normalised Kaldi fbanks `[B, T, feat_dim]` of `[B, N]` 16 kHz audio (rows zero-padded to one T)."""
        feats = []
        for row in wav_16k:
            f = kaldi_fbank(row.unsqueeze(0), num_mel_bins=self.config.feat_dim)
            feats.append(f - f.mean(dim=0, keepdim=True))
        out = feats[0].new_zeros((len(feats), max(f.shape[0] for f in feats), feats[0].shape[1]))
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
        return out

    @torch.inference_mode()
    def inference(self, wav_16k: torch.Tensor) -> torch.Tensor:
        """Speaker embedding `[B, 192]` of 16 kHz audio `[B, N]` (or `[N]`)."""
        if wav_16k.dim() == 1:
            wav_16k = wav_16k.unsqueeze(0)
        return self.forward(self.features(wav_16k).to(torch.float32))
