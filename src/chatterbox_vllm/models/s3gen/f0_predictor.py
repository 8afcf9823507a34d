"""Pitch (F0) predictor of the HiFT vocoder: mel frames -> one non-negative F0 value in Hz per frame.

Weight names follow chatterbox 0.1.7 (`mel2wav.f0_predictor.*`): a `condnet` Sequential whose even entries are
weight-normed convolutions (odd entries are the parameter-free ELUs) and a `classifier` Linear.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass(frozen=True)
class F0PredictorConfig:
    in_channels: int = 80  # mel bins
    cond_channels: int = 512  # width of the convolution stack
    num_convs: int = 5  # weight-normed conv + ELU pairs
    kernel_size: int = 3
    num_class: int = 1  # one F0 value per frame

    @classmethod
    def tiny(cls) -> F0PredictorConfig:
        return cls(cond_channels=16)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> F0PredictorConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown F0PredictorConfig fields: {sorted(unknown)}")
        return cls(**d)


class ConvRNNF0Predictor(nn.Module):
    """`[B, 80, T]` mel -> `[B, T]` F0 in Hz (the absolute value of a linear read-out, so never negative).

    The name is the reference's; despite it, there is no recurrent layer.
    """

    def __init__(self, config: F0PredictorConfig = F0PredictorConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for _ in range(config.num_convs):
            conv = nn.Conv1d(channels, config.cond_channels, config.kernel_size, padding=config.kernel_size // 2)
            layers += [weight_norm(conv), nn.ELU()]
            channels = config.cond_channels
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(config.cond_channels, config.num_class)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` `[B, 1, T]` (rows of a padded batch): each convolution reads zeros past its row's end, as the row
        alone would (ELU(0) = 0, so masking each conv's input is enough)."""
        if mask is None:
            hidden = self.condnet(mel)
        else:
            hidden = mel
            for layer in self.condnet:
                hidden = layer(hidden * mask if isinstance(layer, nn.Conv1d) else hidden)
        return self.classifier(hidden.transpose(1, 2)).squeeze(-1).abs()
