"""Streaming audio encoding for `/v1/audio/speech`: float32 mono chunks -> mp3 | opus | aac | flac | wav | pcm bytes.

One `AudioEncoder` serves one response. Each `encode` call returns the bytes that can go out now, so a client
hears the first sentence while later ones are still being synthesised; `finish` flushes the rest. Compressed
formats go through PyAV (FFmpeg's encoders and muxers, in memory: no subprocess, no temp files); pcm and wav are
plain numpy. `speed` changes tempo with pitch kept through FFmpeg's `atempo` filter.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import struct
from collections.abc import Sequence
from fractions import Fraction

import av
import av.filter
import numpy as np

AUDIO_FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

# What OpenAI sends: opus comes in an Ogg container, aac as ADTS, pcm as raw s16le mono at 24 kHz.
CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

MIN_SPEED = 0.25
MAX_SPEED = 4.0

# format -> (muxer, encoder, encoder sample rate or None for the input rate, bit rate or None for lossless)
_CODECS: dict[str, tuple[str, str, int | None, int | None]] = {
    "mp3": ("mp3", "libmp3lame", None, 64_000),
    "opus": ("ogg", "libopus", 48_000, 32_000),  # Opus runs at 48 kHz; decoders give 48 kHz back
    "aac": ("adts", "aac", None, 64_000),
    "flac": ("flac", "flac", None, None),
}
# Ogg pages every 100 ms (FFmpeg's default is 1 s), so opus leaves the server while it is being made.
_OGG_PAGE_DURATION_US = "100000"
_UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF size of a WAV whose length is not known when its header goes out


def _check_format(fmt: str) -> None:
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}; use one of {', '.join(AUDIO_FORMATS)}")


def _check_speed(speed: float) -> None:
    if isinstance(speed, bool) or not (
        isinstance(speed, numbers.Real) and math.isfinite(speed) and MIN_SPEED <= speed <= MAX_SPEED
    ):
        raise ValueError(f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}; got {speed!r}")


def _as_mono_float(samples: np.ndarray) -> np.ndarray:
    """A flat float32 copy in [-1, 1]; NaN becomes silence (it has no int16 value)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(x, -1.0, 1.0, out=x)


def _to_int16(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 as FFmpeg converts flt -> s16 (round(x * 32768), clipped), so every path agrees."""
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def atempo_stages(speed: float) -> list[float]:
    """`speed` as a product of `atempo` factors each in 0.5..2.0 (e.g. 4.0 -> [2, 2], 3.0 -> [2, 1.5])."""
    _check_speed(speed)
    stages: list[float] = []
    rest = float(speed)
    while rest > 2.0:
        stages.append(2.0)
        rest /= 2.0
    while rest < 0.5:
        stages.append(0.5)
        rest /= 0.5
    if rest != 1.0:
        stages.append(rest)
    return stages


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte RIFF/WAVE header for s16le mono; `data_bytes=None` marks an open-ended stream (sizes 0xFFFFFFFF)."""
    if data_bytes is None:
        riff_size = data_size = _UNKNOWN_SIZE
    else:
        data_size = data_bytes
        riff_size = min(36 + data_bytes, _UNKNOWN_SIZE)
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt_chunk))
        + fmt_chunk
        + b"data"
        + struct.pack("<I", min(data_size, _UNKNOWN_SIZE))
    )


class _Tempo:
    """Streaming `atempo` chain: float chunks in, float chunks out at the same rate, pitch kept."""

    def __init__(self, sample_rate: int, speed: float) -> None:
        self._rate = sample_rate
        self._pts = 0
        self._graph = av.filter.Graph()
        nodes = [self._graph.add_abuffer(sample_rate=sample_rate, format="flt", layout="mono")]
        nodes += [self._graph.add("atempo", f"{stage:.10g}") for stage in atempo_stages(speed)]
        # Pin the output to packed float mono so the pulled frames convert straight to one numpy row.
        nodes.append(self._graph.add("aformat", sample_fmts="flt", channel_layouts="mono"))
        nodes.append(self._graph.add("abuffersink"))
        self._graph.link_nodes(*nodes).configure()

    def push(self, x: np.ndarray) -> np.ndarray:
        if x.size:
            self._graph.push(_float_frame(x, self._rate, self._pts))
            self._pts += x.size
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> np.ndarray:
        out: list[np.ndarray] = []
        while True:
            try:
                frame = self._graph.pull()
            except (BlockingIOError, EOFError):  # av.error's EAGAIN / EOF subclass these
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def _float_frame(x: np.ndarray, sample_rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(x, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = sample_rate
    frame.time_base = Fraction(1, sample_rate)
    frame.pts = pts
    return frame


class _Collector:
    """Non-seekable byte sink for a PyAV muxer: whatever it wrote since the last `take` can be sent."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class _PcmSink:
    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def write(self, x: np.ndarray) -> bytes:
        return _to_int16(x).astype("<i2", copy=False).tobytes()

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _WavSink(_PcmSink):
    """Streamed WAV: open-ended header first, then s16le. A whole file instead buffers and writes exact sizes."""

    def __init__(self, sample_rate: int, whole_file: bool) -> None:
        super().__init__(sample_rate)
        self._whole = whole_file
        self._header_sent = False
        self._data: list[bytes] = []

    def write(self, x: np.ndarray) -> bytes:
        data = super().write(x)
        if self._whole:
            self._data.append(data)
            return b""
        if not self._header_sent:
            self._header_sent = True
            return wav_header(self.sample_rate, None) + data
        return data

    def finish(self) -> bytes:
        if self._whole:
            data = b"".join(self._data)
            self._data.clear()
            return wav_header(self.sample_rate, len(data)) + data
        if not self._header_sent:
            self._header_sent = True
            return wav_header(self.sample_rate, None)
        return b""


class _ContainerSink:
    """PyAV encoder + muxer writing to memory.

    Streaming output goes to a non-seekable collector with packet flushing, so each muxed packet is sendable at
    once (the muxer skips the header rewrites it cannot do). FLAC, and any whole-file encode, uses a seekable
    buffer instead and returns everything at `finish`: FLAC's STREAMINFO (length, MD5) and MP3's Xing/LAME tag
    (exact length, encoder delay) are only right once the muxer can seek back, and common readers such as
    libsndfile reject a FLAC whose length is left unknown.
    """

    def __init__(self, fmt: str, sample_rate: int, whole_file: bool, path: str | None = None) -> None:
        muxer, codec, codec_rate, bit_rate = _CODECS[fmt]
        self._seekable = whole_file or fmt == "flac" or path is not None
        self._out: io.BytesIO | _Collector | None = None
        if path is None:
            self._out = io.BytesIO() if self._seekable else _Collector()
        options = {} if self._seekable else {"flush_packets": "1"}
        if muxer == "ogg":
            options["page_duration"] = _OGG_PAGE_DURATION_US
        # A file path goes to FFmpeg's own file I/O: seekable, so headers are exact, and nothing is held in memory.
        self._container = av.open(path if path is not None else self._out, mode="w", format=muxer, options=options)
        self._rate = codec_rate or sample_rate
        self._stream: av.AudioStream = self._container.add_stream(codec, rate=self._rate, layout="mono")  # type: ignore[assignment]
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._lossless_s16 = fmt == "flac"  # quantise in numpy so FLAC is bit-exact with pcm/wav
        if self._lossless_s16:
            self._stream.format = "s16"
        self._in_rate = sample_rate
        self._resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=self._rate) if self._rate != sample_rate else None
        )
        self._pts = 0  # samples fed, at the input rate
        self._closed = False
        self._container.start_encoding()  # header now: the first bytes go out early, and an empty clip is valid

    def write(self, x: np.ndarray) -> bytes:
        if x.size:
            self._encode(self._frames(x))
        return self._take()

    def finish(self) -> bytes:
        frames = self._resampler.resample(None) if self._resampler else []
        self._encode([*frames, None])
        self._container.close()
        self._closed = True
        if isinstance(self._out, io.BytesIO):
            return self._out.getvalue()
        return self._out.take() if self._out is not None else b""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()

    def _frames(self, x: np.ndarray) -> list[av.AudioFrame]:
        if self._lossless_s16:
            frame = av.AudioFrame.from_ndarray(_to_int16(x).reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self._in_rate
            frame.time_base = Fraction(1, self._in_rate)
            frame.pts = self._pts
        else:
            frame = _float_frame(x, self._in_rate, self._pts)
        self._pts += x.size
        return self._resampler.resample(frame) if self._resampler else [frame]

    def _encode(self, frames: Sequence[av.AudioFrame | None]) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)

    def _take(self) -> bytes:
        return self._out.take() if isinstance(self._out, _Collector) else b""


class AudioEncoder:
    """Encodes one response's audio as it is synthesised; see the module docstring.

    `encode` takes the next float32 mono chunk (any length, may be empty) and returns the bytes ready now (may be
    b""); `finish` returns the rest. All returned bytes concatenated form one complete file of `fmt`.
    With `path`, the file is written there instead (every call returns b""): a long job's audio is encoded to disk
    as it comes, with exact headers, and never held in memory.
    """

    def __init__(
        self,
        fmt: str,
        sample_rate: int = 24000,
        speed: float = 1.0,
        *,
        whole_file: bool = False,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        """`whole_file=True` (used by `encode_file`) holds everything for `finish` so headers carry exact sizes."""
        _check_format(fmt)
        _check_speed(speed)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive; got {sample_rate}")
        self.fmt = fmt
        self.sample_rate = sample_rate
        self.speed = float(speed)
        self._tempo = _Tempo(sample_rate, self.speed) if self.speed != 1.0 else None  # 1.0 bypasses: bit-exact
        self._sink: _PcmSink | _ContainerSink
        self._file: io.BufferedWriter | None = None  # pcm / wav written to `path` (containers open it themselves)
        if fmt == "pcm":
            self._sink = _PcmSink(sample_rate)
        elif fmt == "wav":
            self._sink = _WavSink(sample_rate, whole_file and path is None)
        else:
            self._sink = _ContainerSink(fmt, sample_rate, whole_file, None if path is None else os.fspath(path))
        if path is not None and fmt in ("pcm", "wav"):
            self._file = open(path, "wb")  # noqa: SIM115 - closed by finish / close
        self._finished = False

    def _emit(self, data: bytes) -> bytes:
        if self._file is None:
            return data
        self._file.write(data)
        return b""

    def encode(self, samples: np.ndarray) -> bytes:
        """Feed the next chunk; returns the encoded bytes that can be sent now."""
        if self._finished:
            raise RuntimeError("AudioEncoder.encode called after finish")
        x = _as_mono_float(samples)
        if self._tempo is not None:
            x = self._tempo.push(x)
        return self._emit(self._sink.write(x)) if x.size or self.fmt == "wav" else b""

    def finish(self) -> bytes:
        """Flush the tempo filter, encoder and muxer; returns the remaining bytes (container trailer included)."""
        if self._finished:
            return b""
        self._finished = True
        head = b""
        if self._tempo is not None:
            tail = self._tempo.flush()
            self._tempo = None
            if tail.size:
                head = self._sink.write(tail)
        data = self._emit(head + self._sink.finish())
        if self._file is not None:
            if self.fmt == "wav":  # the streamed header said "length unknown": now the length is known
                data_bytes = self._file.tell() - len(wav_header(self.sample_rate, None))
                self._file.seek(0)
                self._file.write(wav_header(self.sample_rate, data_bytes))
            self._file.close()
        return data

    def close(self) -> None:
        """Release the encoder without finishing the file (the response was abandoned)."""
        if not self._finished:
            self._finished = True
            self._tempo = None
            self._sink.close()
            if self._file is not None:
                self._file.close()


def encode_file(samples: np.ndarray, fmt: str, sample_rate: int = 24000, speed: float = 1.0) -> bytes:
    """A whole clip as one file, with exact lengths in its headers (WAV sizes, FLAC STREAMINFO, MP3 Xing tag)."""
    encoder = AudioEncoder(fmt, sample_rate, speed, whole_file=True)
    return encoder.encode(samples) + encoder.finish()
