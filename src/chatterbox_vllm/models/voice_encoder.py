"""Speaker embedding for T3: a 3-layer LSTM over 40-bin mels (Resemble's port of Real-Time-Voice-Cloning's encoder).

An utterance is cut into overlapping partials of 1.6 s; each partial is embedded (last layer's final hidden state,
projection, ReLU, L2 norm) and the mean of the partial embeddings, L2-normalised again, is the utterance embedding.
Weights: `ve.safetensors` (English) / `ve.pt` (multilingual), 16 tensors, loaded strictly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..audio.mel import ve_mel_spectrogram
from ..checkpoint.weights import load_strict, read_state_dict


@dataclass(frozen=True)
class VoiceEncoderConfig:
    num_mels: int = 40
    sample_rate: int = 16_000
    n_fft: int = 400
    hop_size: int = 160
    fmin: float = 0.0
    fmax: float = 8000.0
    hidden_size: int = 256
    num_layers: int = 3
    # Width of the speaker embedding T3 consumes (`spkr_enc` input): fixed at 256 in every size.
    embedding_size: int = 256
    partial_frames: int = 160
    # Resemble's defaults for embeds_from_wavs: partial rate 1.3/s, last partial kept if >= 80 % covered.
    partial_rate: float = 1.3
    min_coverage: float = 0.8
    trim_top_db: float = 20.0

    @classmethod
    def tiny(cls) -> VoiceEncoderConfig:
        return cls(hidden_size=16)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VoiceEncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown VoiceEncoderConfig fields: {sorted(unknown)}")
        return cls(**d)


def partial_layout(n_frames: int, step: int, window: int, min_coverage: float) -> tuple[int, int]:
    """Number of partials for `n_frames` mel frames and the frame count they span (pad or cut to it)."""
    if n_frames <= 0:
        raise ValueError("no mel frames to embed")
    n_wins, remainder = divmod(max(n_frames - window + step, 0), step)
    if n_wins == 0 or (remainder + (window - step)) / window >= min_coverage:
        n_wins += 1
    return n_wins, window + step * (n_wins - 1)


class VoiceEncoder(nn.Module):
    def __init__(self, config: VoiceEncoderConfig = VoiceEncoderConfig()):
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(config.num_mels, config.hidden_size, num_layers=config.num_layers, batch_first=True)
        self.proj = nn.Linear(config.hidden_size, config.embedding_size)
        # Used only by the training loss; kept because the checkpoints hold them.
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings `[B, E]` of partials `[B, partial_frames, num_mels]`."""
        _, (hidden, _) = self.lstm(mels)
        raw = F.relu(self.proj(hidden[-1]))
        return raw / torch.linalg.norm(raw, dim=1, keepdim=True)

    def frame_step(self) -> int:
        cfg = self.config
        step = int(np.round((cfg.sample_rate / cfg.partial_rate) / cfg.partial_frames))
        if not 0 < step <= cfg.partial_frames:
            raise ValueError(f"partial step {step} out of range")
        return step

    @torch.inference_mode()
    def embeds_from_mels(self, mels: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Utterance embeddings `[N, E]` of mels `(T_i, num_mels)`."""
        cfg = self.config
        step = self.frame_step()
        layouts = [partial_layout(len(m), step, cfg.partial_frames, cfg.min_coverage) for m in mels]
        # All utterances are packed to one length (zero padding), as the reference batches them.
        total = max(max(len(m) for m in mels), max(n for _, n in layouts))
        packed = torch.zeros((len(mels), total, cfg.num_mels), dtype=torch.float32)
        for i, m in enumerate(mels):
            packed[i, : len(m)] = torch.as_tensor(np.asarray(m))
        packed = packed.to(self.device)
        partials = torch.stack(
            [packed[i, k * step : k * step + cfg.partial_frames] for i, (n, _) in enumerate(layouts) for k in range(n)]
        )
        n_chunks = math.ceil(len(partials) / (batch_size or len(partials)))
        partial_embeds = torch.cat([self(chunk) for chunk in partials.chunk(n_chunks)], dim=0).cpu()
        bounds = np.concatenate(([0], np.cumsum([n for n, _ in layouts])))
        means = torch.stack([partial_embeds[a:b].mean(dim=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        return (means / torch.linalg.norm(means, dim=1, keepdim=True)).numpy()

    def trim(self, wav: np.ndarray) -> np.ndarray:
        """Leading/trailing silence removed (librosa.effects.trim, top_db 20)."""
        if not self.config.trim_top_db:
            return wav
        trimmed = librosa.effects.trim(wav, top_db=self.config.trim_top_db)[0]
        if trimmed.size == 0:
            raise ValueError("reference audio is silent: nothing left after trimming silence")
        return trimmed

    def mel(self, wav: np.ndarray) -> np.ndarray:
        cfg = self.config
        return ve_mel_spectrogram(
            wav,
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_size=cfg.hop_size,
            num_mels=cfg.num_mels,
            fmin=cfg.fmin,
            fmax=cfg.fmax,
        )

    def embeds_from_wavs(self, wavs: list[np.ndarray], sample_rate: int, batch_size: int = 32) -> np.ndarray:
        """Utterance embeddings `[N, E]` (float32) of 16 kHz float waveforms."""
        if sample_rate != self.config.sample_rate:
            # The reference resamples here with librosa's "kaiser_fast" (resampy), which we do not ship; its
            # only caller passes 16 kHz, so other rates are refused rather than silently resampled differently.
            raise ValueError(f"the voice encoder takes {self.config.sample_rate} Hz audio, got {sample_rate} Hz")
        mels = [self.mel(self.trim(np.asarray(w, dtype=np.float32))) for w in wavs]
        return self.embeds_from_mels(mels, batch_size=batch_size)


def load_voice_encoder(path: str | Path, config: VoiceEncoderConfig = VoiceEncoderConfig()) -> VoiceEncoder:
    """Build the voice encoder and load `ve.safetensors` or `ve.pt` into it strictly (eval mode, CPU)."""
    model = VoiceEncoder(config)
    load_strict(model, read_state_dict(path), str(path))
    return model.eval()
