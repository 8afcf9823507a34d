"""The mel spectrograms of the three consumers of reference audio.

* S3Gen's 24 kHz log-mel (Matcha-TTS style), which is both the decoder's prompt and the shape of its output;
* the voice encoder's 16 kHz 40-bin power mel (computed with librosa, as the reference does);
* the S3 speech tokenizer's 16 kHz 128-bin log10 mel (Whisper style).

All filterbanks are librosa's Slaney-normalised mel filters, so they are built with librosa itself.
"""

from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np
import torch
import torch.nn.functional as F

S3GEN_SAMPLE_RATE = 24_000


@lru_cache(maxsize=16)
def librosa_mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """`librosa.filters.mel` (Slaney scale and normalisation), float32 `[n_mels, n_fft // 2 + 1]`. Read-only."""
    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    basis.setflags(write=False)
    return basis


def s3gen_mel_spectrogram(
    wav: torch.Tensor,
    *,
    n_fft: int = 1920,
    num_mels: int = 80,
    sample_rate: int = S3GEN_SAMPLE_RATE,
    hop_size: int = 480,
    win_size: int = 1920,
    fmin: float = 0.0,
    fmax: float = 8000.0,
) -> torch.Tensor:
    """Natural-log mel magnitudes `[B, num_mels, frames]` of `[B, N]` (or `[N]`) audio at 24 kHz.

    Reflect padding of `(n_fft - hop) / 2` per side and no STFT centring give `N // hop` frames (when N is a
    multiple of the hop); magnitudes carry a 1e-9 floor inside the square root and the log is clamped at 1e-5.
    """
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    basis = torch.from_numpy(librosa_mel_filters(sample_rate, n_fft, num_mels, fmin, fmax).copy()).to(wav.device)
    window = torch.hann_window(win_size, device=wav.device)
    pad = int((n_fft - hop_size) / 2)
    wav = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        wav,
        n_fft,
        hop_length=hop_size,
        win_length=win_size,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    mel = torch.matmul(basis, magnitude)
    return torch.log(torch.clamp(mel, min=1e-5))


def ve_mel_spectrogram(
    wav: np.ndarray,
    *,
    sample_rate: int = 16_000,
    n_fft: int = 400,
    hop_size: int = 160,
    num_mels: int = 40,
    fmin: float = 0.0,
    fmax: float = 8000.0,
) -> np.ndarray:
    """Voice-encoder features: power (|STFT|^2) mel, frames first, `[1 + N // hop, num_mels]` float32.

    The STFT is centred with reflect padding (the reference pins reflect, librosa's old default).
    """
    spec = librosa.stft(wav, n_fft=n_fft, hop_length=hop_size, win_length=n_fft, center=True, pad_mode="reflect")
    power = np.abs(spec) ** 2
    mel = np.dot(librosa_mel_filters(sample_rate, n_fft, num_mels, fmin, fmax), power)
    return mel.T


def s3_log_mel_spectrogram(
    audio: torch.Tensor, mel_filters: torch.Tensor, window: torch.Tensor, *, n_fft: int = 400, hop: int = 160
) -> torch.Tensor:
    """Whisper-style log-mel `[..., n_mels, frames]` of 16 kHz audio `[..., N]` for the S3 tokenizer.

    Centred STFT (reflect), last frame dropped, power spectrum, log10 clamped at 1e-10, floor at (max - 8) over the
    whole input, then `(x + 4) / 4`.
    """
    stft = torch.stft(audio, n_fft, hop, window=window.to(audio.device), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = mel_filters.to(audio.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
