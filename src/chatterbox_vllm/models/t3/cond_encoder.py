"""T3's non-text conditioning: who speaks (speaker embedding), how (speech prompt), and how expressively.

The encoder turns a `T3Cond` into the prefix rows that precede the text: `spkr_enc(speaker)` (1 row),
`Perceiver(prompt)` (32 rows), `emotion_adv_fc(exaggeration)` (1 row). Embedding the prompt tokens needs T3's speech
tables, so `T3.prepare_conditioning` does that and hands the embeddings in here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import T3Config
from .perceiver import Perceiver


def _default_emotion() -> torch.Tensor:
    return torch.full((1, 1, 1), 0.5)


@dataclass
class T3Cond:
    """Conditioning of one voice: speaker_emb [1, 256], cond_prompt_speech_tokens [1, <=150] long,
    emotion_adv [1, 1, 1] (the "exaggeration", 0.5 by default)."""

    speaker_emb: torch.Tensor
    cond_prompt_speech_tokens: torch.Tensor | None = None
    emotion_adv: torch.Tensor = field(default_factory=_default_emotion)

    def __post_init__(self) -> None:
        if not isinstance(self.emotion_adv, torch.Tensor):
            self.emotion_adv = torch.full((1, 1, 1), float(self.emotion_adv))

    @property
    def device(self) -> torch.device:
        return self.speaker_emb.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> T3Cond:
        """A copy on `device`; `dtype` applies to the float tensors only (prompt tokens stay integer)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        tokens = self.cond_prompt_speech_tokens
        return T3Cond(
            speaker_emb=move(self.speaker_emb),
            cond_prompt_speech_tokens=None if tokens is None else move(tokens),
            emotion_adv=move(self.emotion_adv),
        )


class T3CondEnc(nn.Module):
    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.config = config
        self.spkr_enc = nn.Linear(config.speaker_embed_size, config.hidden_size)
        self.emotion_adv_fc = nn.Linear(1, config.hidden_size, bias=False) if config.emotion_adv else None
        self.perceiver = Perceiver(config) if config.use_perceiver_resampler else None

    def forward(
        self,
        speaker_emb: torch.Tensor,
        prompt_embeds: torch.Tensor | None,
        emotion_adv: torch.Tensor | None,
    ) -> torch.Tensor:
        """speaker_emb [B, 256], prompt_embeds [B, T, hidden] or None, emotion_adv [B, 1, 1]
        -> [B, len_cond, hidden]."""
        rows = [self.spkr_enc(speaker_emb.view(-1, self.config.speaker_embed_size))[:, None]]
        if prompt_embeds is not None:
            rows.append(self.perceiver(prompt_embeds) if self.perceiver is not None else prompt_embeds)
        if self.emotion_adv_fc is not None:
            if emotion_adv is None:
                raise ValueError("this T3 is conditioned on emotion_adv (exaggeration); none was given")
            rows.append(self.emotion_adv_fc(emotion_adv.view(-1, 1, 1)))
        return torch.cat(rows, dim=1)
