"""Sample-rate conversion, matching the two resamplers the reference uses.

The reference resamples a reference clip twice, with different algorithms, and the results feed different
models: `librosa.resample` (soxr, "HQ" quality) for the voice encoder and T3's speech prompt, and torchaudio's
windowed-sinc `Resample` for CAMPPlus and S3Gen's prompt tokens. The two 16 kHz signals differ slightly, and the
speech tokens computed from them differ too, so both are reproduced here (torchaudio itself is not a dependency).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import soxr
import torch
import torch.nn.functional as F


def resample_soxr_hq(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis as `librosa.resample(x, orig_sr=..., target_sr=...)` does by default.

    That is soxr at "HQ" quality, then the output length is forced to `ceil(n * target_sr / orig_sr)` (zero-padded
    or cut), and the input dtype is kept.
    """
    x = np.asarray(x)
    if orig_sr == target_sr:
        return x
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    n_out = int(np.ceil(x.shape[-1] * (float(target_sr) / orig_sr)))
    if x.ndim == 1:
        y = soxr.resample(x, orig_sr, target_sr, quality="soxr_hq")
    else:
        y = np.apply_along_axis(soxr.resample, -1, x, in_rate=orig_sr, out_rate=target_sr, quality="soxr_hq")
    if y.shape[-1] > n_out:
        y = y[..., :n_out]
    elif y.shape[-1] < n_out:
        pad = [(0, 0)] * (y.ndim - 1) + [(0, n_out - y.shape[-1])]
        y = np.pad(y, pad)
    return np.asarray(y, dtype=x.dtype)


@lru_cache(maxsize=16)
def sinc_hann_kernel(
    orig_sr: int,
    target_sr: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filter bank `[new, 1, 2*width + orig]` (rates reduced by their gcd) and `width`.

    `dtype=None` builds it as torchaudio's `transforms.Resample` does (the reference's choice): in float64 (only
    the output-phase offsets `j/new` are formed in float32, as torchaudio's integer `arange` divided by an int
    yields float32), then cast to float32. A dtype builds it entirely in that dtype, as
    `torchaudio.functional.resample` does with the waveform's dtype (differences ~1e-6).
    """
    gcd = math.gcd(int(orig_sr), int(target_sr))
    orig = int(orig_sr) // gcd
    new = int(target_sr) // gcd
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    taps = torch.arange(-width, width + orig, dtype=dtype or torch.float64)[None, None] / orig
    phases = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new  # float32 when dtype is None
    t = (phases + taps) * base_freq
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), t.sin() / t)
    kernel = kernel * (window * (base_freq / orig))
    return kernel.to(dtype or torch.float32), width


def resample_sinc_hann(x: torch.Tensor, orig_sr: int, target_sr: int, *, like_functional: bool = False) -> torch.Tensor:
    """Resample the last axis like torchaudio `transforms.Resample(orig_sr, target_sr)` with its defaults.

    Defaults are sinc interpolation with a squared-cosine (Hann) window, 6 zero crossings, rolloff 0.99.
    `like_functional=True` instead matches `torchaudio.functional.resample` (kernel built in `x.dtype`).
    """
    if orig_sr == target_sr:
        return x
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point waveform, got {x.dtype}")
    gcd = math.gcd(int(orig_sr), int(target_sr))
    orig = int(orig_sr) // gcd
    new = int(target_sr) // gcd
    kernel, width = sinc_hann_kernel(int(orig_sr), int(target_sr), dtype=x.dtype if like_functional else None)
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = F.pad(flat, (width, width + orig))
    y = F.conv1d(padded[:, None], kernel, stride=orig)
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)
    y = y[..., : math.ceil(new * length / orig)]
    return y.reshape(shape[:-1] + y.shape[-1:])
