"""Audio encoding for /v1/audio/speech: real FFmpeg encoders (through PyAV) and real decoders, no mocks.

Every format is streamed in ~0.2 s chunks the way the server sends it, the concatenated bytes decoded back, and
checked for rate, channels, duration, exactness (lossless) or pitch (lossy). Speed changes duration, not pitch.
"""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest
import soundfile as sf

from chatterbox_vllm.server.audio import AUDIO_FORMATS, CONTENT_TYPES, AudioEncoder, atempo_stages, encode_file

SR = 24000
TONE_HZ = 220.0
CHUNK = 4800  # 0.2 s
LOSSLESS = ("pcm", "wav", "flac")
# ADTS cannot signal the AAC encoder's 1024-sample priming, so decoders play it back as leading silence.
AAC_PRIMING_S = 1024 / SR
# Streamed mp3 (no Xing/LAME tag: the header is gone before the length is known) and ADTS aac also decode
# their encoder delay and last-frame padding: allow for that on top of relative tolerances.
CODEC_PADDING_S = {"mp3": 0.09, "aac": 0.09}


def tone(seconds: float = 3.0) -> np.ndarray:
    """A 220 Hz sine plus a little noise, float32 mono."""
    t = np.arange(round(seconds * SR)) / SR
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.5 * np.sin(2 * np.pi * TONE_HZ * t) + 0.01 * noise).astype(np.float32)


def quantised(x: np.ndarray) -> np.ndarray:
    """int16 as FFmpeg converts float -> s16: round(x * 32768), clipped."""
    return np.clip(np.rint(np.clip(x, -1, 1) * 32768.0), -32768, 32767).astype(np.int16)


def stream(fmt: str, x: np.ndarray, speed: float = 1.0) -> list[bytes]:
    """Encoder outputs, one per chunk fed, then finish()'s."""
    encoder = AudioEncoder(fmt, SR, speed)
    parts = [encoder.encode(x[i : i + CHUNK]) for i in range(0, x.size, CHUNK)]
    parts.append(encoder.finish())
    return parts


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int, int]:
    """(mono samples, sample rate, channels) as PyAV/FFmpeg reads the bytes."""
    kw = {"format": "s16le", "options": {"sample_rate": str(SR), "ch_layout": "mono"}} if fmt == "pcm" else {}
    with av.open(io.BytesIO(data), **kw) as container:
        audio = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(audio)]
        rate, channels = audio.codec_context.sample_rate, audio.codec_context.channels
    samples = np.concatenate(frames, axis=1) if frames else np.zeros((channels, 0))
    assert samples.shape[0] == 1 or channels == 1
    return samples.reshape(-1), rate, channels


def dominant_hz(y: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(y.astype(np.float64) * np.hanning(y.size)))
    return float(np.fft.rfftfreq(y.size, 1 / rate)[spectrum.argmax()])


def decoded_seconds(y: np.ndarray, rate: int, fmt: str) -> float:
    return y.size / rate - (AAC_PRIMING_S if fmt == "aac" else 0.0)


# --------------------------------------------------------------------------------------------- contract
def test_formats_and_content_types() -> None:
    assert AUDIO_FORMATS == ("mp3", "opus", "aac", "flac", "wav", "pcm")
    assert CONTENT_TYPES == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }


@pytest.mark.parametrize("fmt", ["ogg", "MP3", "", "s16le"])
def test_unknown_format_rejected(fmt: str) -> None:
    with pytest.raises(ValueError, match="mp3, opus, aac, flac, wav, pcm"):
        AudioEncoder(fmt)
    with pytest.raises(ValueError):
        encode_file(tone(0.1), fmt)


@pytest.mark.parametrize("speed", [0.0, 0.2, 0.2499, 4.01, 10.0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_bad_speed_rejected(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        AudioEncoder("mp3", SR, speed)
    with pytest.raises(ValueError, match="speed"):
        encode_file(tone(0.1), "pcm", SR, speed)


def test_atempo_stages_stay_within_one_filters_range() -> None:
    assert atempo_stages(1.0) == []
    assert atempo_stages(4.0) == [2.0, 2.0]
    assert atempo_stages(0.25) == [0.5, 0.5]
    assert atempo_stages(3.0) == [2.0, 1.5]
    for speed in (0.25, 0.3, 0.5, 0.7, 1.5, 2.0, 2.5, 3.9, 4.0):
        stages = atempo_stages(speed)
        assert all(0.5 <= s <= 2.0 for s in stages)
        assert np.prod(stages) == pytest.approx(speed)


# --------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_streamed_file_decodes(fmt: str) -> None:
    x = tone(3.0)
    data = b"".join(stream(fmt, x))
    y, rate, channels = decode(data, fmt)
    assert channels == 1
    assert rate == (48000 if fmt == "opus" else SR)
    if fmt in LOSSLESS:
        assert y.size == x.size
        np.testing.assert_array_equal(y, quantised(x))
    else:
        assert abs(decoded_seconds(y, rate, fmt) - 3.0) <= 0.060
        assert abs(dominant_hz(y, rate) - TONE_HZ) <= 5.0


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_streamed_lossless_reads_with_soundfile(fmt: str) -> None:
    x = tone(3.0)
    y, rate = sf.read(io.BytesIO(b"".join(stream(fmt, x))), dtype="int16")
    assert rate == SR and y.ndim == 1
    np.testing.assert_array_equal(y, quantised(x))


def test_streamed_wav_header_is_open_ended() -> None:
    data = b"".join(stream("wav", tone(0.5)))
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[36:40] == b"data"
    assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    assert len(data) == 44 + 2 * round(0.5 * SR)


def test_pcm_is_raw_s16le_bit_exact_and_clipped() -> None:
    encoder = AudioEncoder("pcm")
    assert encoder.encode(np.zeros(0, np.float32)) == b""
    data = encoder.encode(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 1 / 32768], np.float32)) + encoder.finish()
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767, -32768, 32767, -32768, 1]


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac"])
def test_uneven_and_empty_chunks_keep_every_sample(fmt: str) -> None:
    x = tone(1.0)
    encoder = AudioEncoder(fmt)
    cuts = [0, 1, 1, 577, 4000, 4000, 13_000, x.size]
    data = b"".join(encoder.encode(x[a:b]) for a, b in zip(cuts, cuts[1:])) + encoder.finish()
    y, _, _ = decode(data, fmt)
    np.testing.assert_array_equal(y, quantised(x))


# --------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "wav", "pcm"])
def test_bytes_flow_before_finish(fmt: str) -> None:
    x = tone(3.0)
    parts = stream(fmt, x)
    first_second = b"".join(parts[:5])  # five 0.2 s chunks
    total = b"".join(parts)
    assert first_second, f"{fmt} held everything back after 1 s of audio"
    assert len(first_second) >= 0.2 * len(total), f"{fmt} sent only {len(first_second)} of {len(total)} bytes"


def test_finish_is_final() -> None:
    encoder = AudioEncoder("mp3")
    encoder.encode(tone(0.3))
    assert encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError):
        encoder.encode(tone(0.1))


def test_close_abandons_cleanly() -> None:
    encoder = AudioEncoder("opus", SR, 1.5)
    encoder.encode(tone(0.5))
    encoder.close()
    assert encoder.finish() == b""


# --------------------------------------------------------------------------------------------- speed
@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
@pytest.mark.parametrize("speed", [0.5, 2.0, 0.25, 4.0, 1.5])
def test_speed_changes_duration_not_pitch(speed: float, fmt: str) -> None:
    x = tone(3.0)
    y, rate, channels = decode(b"".join(stream(fmt, x, speed)), fmt)
    assert channels == 1
    expected = 3.0 / speed
    got = decoded_seconds(y, rate, fmt)
    assert abs(got - expected) <= 0.05 * expected + CODEC_PADDING_S.get(fmt, 0.0), (got, expected)
    assert abs(dominant_hz(y, rate) - TONE_HZ) <= 5.0


def test_speed_stream_matches_whole_clip() -> None:
    """The tempo filter streams: chunked input gives the same audio as one call."""
    x = tone(2.0)
    chunked = b"".join(stream("pcm", x, 1.5))
    assert chunked == encode_file(x, "pcm", SR, 1.5)


# --------------------------------------------------------------------------------------------- whole files
def test_encode_file_wav_has_exact_sizes() -> None:
    x = tone(3.0)
    data = encode_file(x, "wav")
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        assert w.getnframes() == x.size
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    np.testing.assert_array_equal(frames, quantised(x))
    assert int.from_bytes(data[4:8], "little") == len(data) - 8


def test_encode_file_wav_with_speed() -> None:
    with wave.open(io.BytesIO(encode_file(tone(3.0), "wav", SR, 2.0))) as w:
        assert abs(w.getnframes() - 1.5 * SR) <= 0.05 * 1.5 * SR


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_encode_file_decodes(fmt: str) -> None:
    x = tone(3.0)
    y, rate, channels = decode(encode_file(x, fmt), fmt)
    assert channels == 1
    if fmt in LOSSLESS:
        np.testing.assert_array_equal(y, quantised(x))
    elif fmt == "aac":
        assert abs(decoded_seconds(y, rate, fmt) - 3.0) <= 0.060
    else:  # the mp3 Xing/LAME tag and Ogg Opus pre-skip let decoders trim to the exact length
        assert abs(y.size / rate - 3.0) <= 0.002
    if fmt == "flac":
        with sf.SoundFile(io.BytesIO(encode_file(x, fmt))) as f:
            assert (f.frames, f.samplerate, f.channels) == (x.size, SR, 1)


# --------------------------------------------------------------------------------------------- straight to a file
@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_path_writes_the_same_file_as_encode_file(fmt: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With `path` (long jobs' exports) every call returns b"" and the file on disk is byte for byte the whole-file
    encoding: exact headers (WAV sizes, FLAC STREAMINFO, MP3 Xing tag) without holding the audio in memory."""
    x = tone(2.0)
    path = tmp_path / f"out.{fmt}"
    encoder = AudioEncoder(fmt, SR, path=path)
    assert [encoder.encode(x[i : i + CHUNK]) for i in range(0, x.size, CHUNK)] == [b""] * -(-x.size // CHUNK)
    assert encoder.finish() == b""
    if fmt == "opus":  # each Ogg stream gets a random serial number: compare what decodes instead
        np.testing.assert_array_equal(decode(path.read_bytes(), fmt)[0], decode(encode_file(x, fmt), fmt)[0])
    else:
        assert path.read_bytes() == encode_file(x, fmt)


def test_path_close_leaves_a_closed_partial_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "out.wav"
    encoder = AudioEncoder("wav", SR, path=path)
    encoder.encode(tone(0.5))
    encoder.close()
    assert encoder.finish() == b""
    path.unlink()  # closed: removable at once, as the jobs runner does with an abandoned export
