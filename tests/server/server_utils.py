"""Helpers and fixtures of the server tests: uvicorn on loopback ports over the tiny English checkpoint, all
sharing one vLLM engine. (Not a conftest.py: the top-level conftest is imported as `conftest` by other tests.)"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile
import uvicorn
from leases import lease

from chatterbox_vllm.engine.vllm_engine import VLLMOptions
from chatterbox_vllm.server.app import create_app
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import ChatterboxTTS

# 40 speech tokens a piece: the random model never samples the stop token, so every piece is 39 x 40 ms long.
TOKENS_PER_PIECE = 40
PIECE_SECONDS = (TOKENS_PER_PIECE - 1) * 0.04


@dataclass
class Server:
    url: str
    settings: Settings
    app: object
    server: uvicorn.Server
    thread: threading.Thread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(settings: Settings, tts: ChatterboxTTS | None, extra: tuple[ChatterboxTTS, ...] = ()) -> Server:
    """uvicorn on a free loopback port: `tts` (and `extra` models beside it) served, or loaded by the app when None."""
    port = _free_port()
    app = create_app(settings, tts=tts, extra=extra)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    return Server(f"http://127.0.0.1:{port}", settings, app, server, thread)


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


def stop_server(server: Server) -> None:
    server.server.should_exit = True
    server.thread.join(timeout=30)


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {"model": "english", "max_new_tokens": TOKENS_PER_PIECE, "voices_dir": str(tmp_path / "voices")}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def english_tts(request: pytest.FixtureRequest, english_tiny_checkpoint: Path) -> Iterator[ChatterboxTTS]:
    """The tiny English model on one vLLM engine, shared by every server test module that uses it and closed after
    the last of them (tests/leases.py)."""

    @contextlib.contextmanager
    def load() -> Iterator[ChatterboxTTS]:
        tts = ChatterboxTTS.from_local(
            english_tiny_checkpoint,
            device="cpu",
            engine="vllm",
            vllm_options=VLLMOptions(max_model_len=512, max_num_seqs=16, dtype="float32"),
        )
        try:
            yield tts
        finally:
            tts.close()

    with lease(request, "english_tts", load) as tts:
        yield tts


@pytest.fixture(scope="module")
def server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(make_settings(tmp_path_factory.mktemp("open")), english_tts)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def keyed_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(make_settings(tmp_path_factory.mktemp("keyed"), api_key="sk-test-123"), english_tts)
    yield running
    stop_server(running)


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
