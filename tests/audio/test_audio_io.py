"""Decoding and resampling of reference clips, checked against librosa (the reference's loader) and signal facts."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from chatterbox_vllm.audio.io import AudioDecodeError, load_audio
from chatterbox_vllm.audio.resample import resample_sinc_hann, resample_soxr_hq, sinc_hann_kernel


def _tone(sr: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(0)
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono, 0.5 * mono + 0.05], axis=1).astype(np.float32)


FORMATS = [
    ("wav", "WAV", "FLOAT"),
    ("flac", "FLAC", "PCM_16"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize("ext,fmt,subtype", FORMATS, ids=[f[0] for f in FORMATS])
@pytest.mark.parametrize("channels", [1, 2])
def test_load_audio_equals_librosa_load(tmp_path, ext, fmt, subtype, channels):
    sr = 44100
    path = tmp_path / f"clip.{ext}"
    sf.write(path, _tone(sr, channels=channels), sr, format=fmt, subtype=subtype)

    ours = load_audio(path, 24000)
    theirs, _ = librosa.load(path, sr=24000)

    assert ours.dtype == np.float32 and ours.ndim == 1
    np.testing.assert_array_equal(ours, theirs)
    # Same result from the bytes of an upload.
    np.testing.assert_array_equal(load_audio(path.read_bytes(), 24000), theirs)


def test_load_audio_native_rate(tmp_path):
    wav = _tone(16000)
    path = tmp_path / "clip.wav"
    sf.write(path, wav, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, None), wav)
    np.testing.assert_array_equal(load_audio(path, 16000), wav)


@pytest.mark.parametrize(
    "payload", [b"", b"definitely not audio" * 10, b"RIFF\x00\x00\x00\x00WAVEfmt "], ids=["empty", "junk", "truncated"]
)
def test_undecodable_bytes_raise(payload):
    with pytest.raises(AudioDecodeError):
        load_audio(payload, 24000)


def test_unreadable_and_empty_files_raise(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioDecodeError):
        load_audio(junk, 24000)
    with pytest.raises(AudioDecodeError):
        load_audio(tmp_path / "missing.wav", 24000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioDecodeError, match="no samples"):
        load_audio(empty, 24000)
    assert issubclass(AudioDecodeError, ValueError)


@pytest.mark.parametrize("orig,new", [(24000, 16000), (44100, 24000), (16000, 24000), (22050, 16000)])
def test_resample_soxr_hq_equals_librosa(orig, new):
    x = _tone(orig, seconds=0.37)
    np.testing.assert_array_equal(resample_soxr_hq(x, orig, new), librosa.resample(x, orig_sr=orig, target_sr=new))


@pytest.mark.parametrize("orig,new", [(24000, 16000), (44100, 16000), (16000, 24000), (22050, 24000)])
def test_resample_sinc_hann_preserves_in_band_tone(orig, new):
    n = int(orig * 0.5)
    t = torch.arange(n, dtype=torch.float64) / orig
    x = torch.sin(2 * math.pi * 1000 * t).float()[None]
    y = resample_sinc_hann(x, orig, new)
    assert y.shape == (1, math.ceil(new * n / orig))
    expected = torch.sin(2 * math.pi * 1000 * torch.arange(y.shape[-1], dtype=torch.float64) / new).float()
    # Away from the edges (where the zero padding shows) the band-limited tone comes through almost unchanged.
    core = slice(200, y.shape[-1] - 200)
    assert (y[0, core] - expected[core]).abs().max() < 2e-3


def test_sinc_kernel_has_unit_dc_gain():
    kernel, width = sinc_hann_kernel(24000, 16000)
    assert kernel.shape == (2, 1, 2 * width + 3)
    # Each polyphase branch is a low-pass filter whose taps sum to ~1: a constant signal passes unchanged.
    assert torch.allclose(kernel.sum(dim=-1), torch.ones(2, 1), atol=1e-3)


def test_resample_identity_and_batch_shape():
    x = torch.randn(2, 3, 480)
    assert resample_sinc_hann(x, 16000, 16000) is x
    assert resample_sinc_hann(x, 24000, 16000).shape == (2, 3, 320)
