"""Kaldi-compatible log mel filterbank features (what CAMPPlus was trained on).

Equals `torchaudio.compliance.kaldi.fbank` for the options the reference passes (only `num_mel_bins=80`; all else
default: 25 ms Povey windows every 10 ms with snipped edges, per-frame DC removal, pre-emphasis 0.97, FFT size
rounded up to a power of two, power spectrum, mel bins from 20 Hz to Nyquist, no dither, no energy column).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

_EPSILON = torch.finfo(torch.float32).eps


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


@lru_cache(maxsize=8)
def kaldi_mel_banks(
    num_bins: int, padded_window: int, sample_rate: float, low_freq: float, high_freq: float
) -> torch.Tensor:
    """Triangular filters on Kaldi's mel scale, `[num_bins, padded_window // 2]` (float32, no VTLN warping)."""
    if num_bins <= 3:
        raise ValueError("Kaldi filterbanks need at least 4 mel bins")
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel band {low_freq}..{high_freq} Hz for sample rate {sample_rate}")
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    fft_mel = _mel((sample_rate / padded_window) * torch.arange(padded_window / 2)).unsqueeze(0)
    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(rising, falling))


@lru_cache(maxsize=8)
def _povey_window(size: int) -> torch.Tensor:
    return torch.hann_window(size, periodic=False).pow(0.85)


def kaldi_fbank(
    waveform: torch.Tensor,
    num_mel_bins: int = 80,
    *,
    sample_frequency: float = 16000.0,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """Log mel filterbank energies `[frames, num_mel_bins]` of a mono waveform `[1, N]` or `[N]`.

    `waveform` is in the units it comes in (the reference feeds float audio in [-1, 1], not 16-bit integers).
    """
    if waveform.dim() == 2:
        waveform = waveform[0]
    if waveform.dim() != 1:
        raise ValueError(f"expected a mono waveform [1, N] or [N], got shape {tuple(waveform.shape)}")
    shift = int(sample_frequency * frame_shift_ms * 0.001)
    size = int(sample_frequency * frame_length_ms * 0.001)
    padded = 1 if size == 0 else 2 ** (size - 1).bit_length()
    if waveform.numel() < size:
        raise ValueError(f"audio of {waveform.numel()} samples is shorter than one {size}-sample frame")
    device, dtype = waveform.device, waveform.dtype

    n_frames = 1 + (waveform.numel() - size) // shift
    waveform = waveform.contiguous()
    frames = waveform.as_strided((n_frames, size), (shift * waveform.stride(0), waveform.stride(0)))
    frames = frames - frames.mean(dim=1).unsqueeze(1)
    if preemphasis != 0.0:
        previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
        frames = frames - preemphasis * previous[:, :-1]
    frames = frames * _povey_window(size).to(device=device, dtype=dtype).unsqueeze(0)
    if padded != size:
        frames = F.pad(frames.unsqueeze(0), (0, padded - size), mode="constant", value=0).squeeze(0)

    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = kaldi_mel_banks(num_mel_bins, padded, float(sample_frequency), float(low_freq), float(high_freq))
    banks = F.pad(banks.to(device=device, dtype=dtype), (0, 1), mode="constant", value=0)  # no weight on Nyquist
    energies = torch.mm(power, banks.T)
    return torch.max(energies, torch.tensor(_EPSILON, device=device, dtype=dtype)).log()
