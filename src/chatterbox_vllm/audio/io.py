"""Decoding reference clips: a file path or the bytes of an upload, to mono float32 at a chosen rate.

The result equals `librosa.load(path, sr=target_sr)`, which the reference calls: libsndfile decoding to float32,
mono by averaging channels, soxr "HQ" resampling. libsndfile (>= 1.1) reads WAV, FLAC, OGG/Vorbis/Opus and MP3.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
import soundfile as sf

from .resample import resample_soxr_hq


class AudioDecodeError(ValueError):
    """The audio cannot be decoded, or holds no samples."""


class UnreadableAudioError(AudioDecodeError):
    """The decoder does not recognise the data as audio (another format, or a broken file); the message holds
    the decoder's own words, meant for a log rather than for whoever sent the file."""


class AudioTooLongError(AudioDecodeError):
    """The audio lasts longer than the caller accepts; found before decoding more than the limit."""

    def __init__(self, message: str, seconds_at_least: float) -> None:
        super().__init__(message)
        self.seconds_at_least = seconds_at_least


AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
# Beyond these a file is not a voice recording; refusing them up front bounds what decoding can allocate.
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8


def load_audio(source: AudioSource, target_sr: int | None, max_seconds: float | None = None) -> np.ndarray:
    """Decode `source` to a 1-D float32 array at `target_sr` (or the file's own rate when `target_sr` is None).

    With `max_seconds`, at most that much (plus one frame) is decoded and a longer file raises
    `AudioTooLongError`: a small, highly compressed file cannot expand into gigabytes of samples."""
    y, native_sr = decode_audio(source, max_seconds)
    if target_sr is not None and target_sr != native_sr:
        y = resample_soxr_hq(y, native_sr, target_sr)
    return np.ascontiguousarray(y, dtype=np.float32)


def decode_audio(
    source: AudioSource, max_seconds: float | None = None, name: str | None = None
) -> tuple[np.ndarray, int]:
    """`source` as mono float32 at its own rate, and that rate (`load_audio` without resampling; same checks).
    Error messages start with `name` (default: the path, or the size of in-memory data)."""
    name = name or _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioDecodeError(f"{name}: empty input")
        source = io.BytesIO(bytes(source))
    try:
        with sf.SoundFile(source) as f:
            native_sr = f.samplerate
            if not 0 < native_sr <= MAX_SAMPLE_RATE or not 0 < f.channels <= MAX_CHANNELS:
                raise AudioDecodeError(
                    f"{name}: {f.channels} channels at {native_sr} Hz is not a voice recording "
                    f"(at most {MAX_CHANNELS} channels and {MAX_SAMPLE_RATE} Hz)"
                )
            frames = -1 if max_seconds is None else int(max_seconds * native_sr) + 1
            y = f.read(frames=frames, dtype="float32", always_2d=False).T
            if max_seconds is not None and y.shape[-1] >= frames:
                raise AudioTooLongError(
                    f"{name}: the audio lasts longer than {max_seconds:g} s", seconds_at_least=frames / native_sr
                )
    except AudioDecodeError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        detail = str(exc).replace(repr(source), "the data")  # libsndfile names an in-memory file by its repr
        raise UnreadableAudioError(f"{name}: cannot decode audio ({detail})") from exc
    except OSError as exc:  # missing file, permission denied
        raise AudioDecodeError(f"{name}: cannot read audio ({exc})") from exc
    if y.ndim > 1:
        y = np.mean(y, axis=tuple(range(y.ndim - 1)))  # librosa.to_mono
    if y.size == 0:
        raise AudioDecodeError(f"{name}: the audio holds no samples")
    if not np.all(np.isfinite(y)):
        raise AudioDecodeError(f"{name}: the audio holds NaN or infinite samples")
    return np.ascontiguousarray(y, dtype=np.float32), native_sr


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of audio>"
    return getattr(source, "name", "<audio stream>")
