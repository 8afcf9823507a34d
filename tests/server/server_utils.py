"""Helpers of the server tests: requests in progress, decoding, OpenAI's error shape, uploads. The in-process
server helpers come from tests/support/servers.py (imported here too, for the tests that import them from here);
the fixtures (`english_tts`, `server`, `keyed_server`) from the plugin tests/server_fixtures.py."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator

import av
import httpx
import numpy as np
import soundfile
from support.servers import (  # noqa: F401 - the server tests import these from here
    PIECE_SECONDS,
    TOKENS_PER_PIECE,
    Server,
    make_settings,
    start_server,
    stop_server,
)


@contextlib.contextmanager
def one_request_in_progress(server: Server, model: str = "tts-1") -> Iterator[None]:
    """A long pcm request whose response is left unread after its first chunk, so it stays in progress."""
    # ~80 pieces of pcm (~6 MB): more than the socket buffers hold while this client reads nothing more
    text = " ".join(f"Sentence number {i} is here to make the input long enough." for i in range(400))
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=300,
                      json={"model": model, "input": text, "voice": "alloy", "response_format": "pcm"}) as first:
        chunks = first.iter_bytes()  # kept: a dropped iterator closes the response (a client hanging up)
        next(chunks)
        yield


def wait_idle(server: Server, timeout_s: float = 30) -> None:
    """Until no speech request is in progress (a closed stream gives its place back)."""
    deadline = time.monotonic() + timeout_s
    while server.app.state.admission.active and time.monotonic() < deadline:
        time.sleep(0.1)


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decoded mono samples and their rate, with the formats' own decoders."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, 24000
    if fmt in ("wav", "flac"):
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        return samples, rate
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    return np.concatenate([f.reshape(-1) if f.shape[0] == 1 else f[0] for f in frames]), rate


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    """The error in OpenAI's shape, exactly: its four keys, the type for `status`, a message and a code (clients
    branch on it), and `param` naming the field at fault when one is given."""
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    expected = "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error"
    assert error["type"] == expected, error
    assert isinstance(error["code"], str) and re.fullmatch(r"[a-z_]+", error["code"]), error
    if param is not None:
        assert error["param"] == param, error
    return error


def sine_clip(seconds: float = 2.0, rate: int = 24000, fmt: str = "WAV") -> bytes:
    """A voice-upload stand-in: a 180 Hz tone as a 16-bit audio file."""
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate, format=fmt)
    return buffer.getvalue()


def flac_bomb(hours: float = 1.0, rate: int = 48_000) -> bytes:
    """A constant signal compresses to almost nothing in FLAC: about 0.5 MB per hour that decodes to 691 MB of
    float32 samples per hour at 48 kHz."""
    buffer = io.BytesIO()
    block = np.full(rate * 60, 0.25, dtype=np.float32)
    with soundfile.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(hours * 60)):
            f.write(block)
    return buffer.getvalue()
