"""A start as a user sees it: `chatterbox-vllm serve --model random-tiny` as `serve` runs by default (vLLM's CPU
build, its engine core in a process of its own), on a fresh cache (the random checkpoint is written first).

The log has no line at WARNING or above, from any process and in any form (a log record, a Python warning, a C++
note, a library's own handler), and exactly one line that says the server runs: the ready line, after /health has
answered 503 with what loads. random-tiny answers about as long as its text would take to say. A model that fails
to load gives one ERROR line and no ready line. With `--log-level debug` the notices kept out of the info log show.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import soundfile

from chatterbox_vllm.server.startup import READY_PREFIX
from support.processes import free_port, server_process

# The server's log format (log_config.FORMAT): time, level, logger, message.
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(?P<logger>\S+): (?P<message>.*)$"
)
LOUD = {"WARNING", "ERROR", "CRITICAL"}
SHORT_TEXT = "Hello world."
LONG_TEXT = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of storms. "
    "Every evening the keeper climbed the spiral stairs to light the lamp."
)


@dataclass
class Start:
    url: str
    port: int
    voices: Path
    log: Path
    loading: list[tuple[dict, int]] = field(default_factory=list)  # /health while loading, ready lines by then


def _args() -> list[str]:
    return [sys.executable, "-m", "chatterbox_vllm.cli", "serve", "--model", "random-tiny"]


def _env(tmp: Path, port: int) -> dict[str, str]:
    # Only where to listen and what to write where; every limit is the default a user gets.
    return {**os.environ, "CHATTERBOX_CACHE_DIR": str(tmp / "cache"), "CHATTERBOX_HOST": "127.0.0.1",
            "CHATTERBOX_PORT": str(port), "CHATTERBOX_VOICES_DIR": str(tmp / "voices")}  # fmt: skip


def ready_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if READY_PREFIX in line]


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("clean-start")
    port = free_port()
    log = tmp / "server.log"
    started = Start(f"http://127.0.0.1:{port}", port, tmp / "voices", log)

    def while_loading(url: str, health: httpx.Response) -> None:
        started.loading.append((health.json(), len(ready_lines(log.read_text()))))

    with server_process(_args(), _env(tmp, port), port, log, while_loading=while_loading) as (url, _):
        deadline = time.monotonic() + 30  # /health turns 200 as the model is marked ready, just before the line
        while not ready_lines(log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        yield started


def loud_lines(text: str) -> list[str]:
    """Lines at WARNING or above, and every line not in the log's format (a raw print: a Python warning, a C++
    note, a library's own handler)."""
    loud = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match is None or match["level"] in LOUD:
            loud.append(line)
    return loud


def test_start_log_has_no_warning_and_one_ready_line(start: Start) -> None:
    text = start.log.read_text()
    assert loud_lines(text) == []
    (ready,) = ready_lines(text)
    assert LOG_LINE.match(ready)["level"] == "INFO"
    url = f"http://127.0.0.1:{start.port}"
    for part in (f"API {url}/v1", f"web page {url}/", "model chatterbox-english (random-tiny)", "preset medium",
                 "device cpu", f"voices {start.voices}"):  # fmt: skip
        assert part in ready, part
    assert not re.search(r"Uvicorn running|Application startup complete|serving english", text)


def test_health_said_what_loads_before_the_ready_line(start: Start) -> None:
    assert start.loading, "/health was never seen answering while the model loaded"
    for body, ready_lines_then in start.loading:
        assert body["status"] == "loading" and ready_lines_then == 0
        assert body["loading"].startswith("chatterbox-english (random-tiny): ")
        assert body["models"][0]["stage"] in body["loading"]
    stages = {body["models"][0]["stage"] for body, _ in start.loading}
    assert stages & {"starting the T3 engine (vLLM)", "loading S3Gen, the voice encoder and the text tokenizer"}
    # The cache starts empty: the port answered while the random checkpoint was still being written, not after.
    assert "writing the random-weight checkpoint (first start) or finding it in the cache" in stages


def _seconds(url: str, text: str) -> float:
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"}
    response = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=300)
    assert response.status_code == 200, response.text
    info = soundfile.info(io.BytesIO(response.content))
    return info.frames / info.samplerate


def test_random_tiny_answers_about_as_long_as_the_text_takes_to_say(start: Start) -> None:
    """Its random T3 never samples the stop token: without the checkpoint's speaking pace "Hello world." was ~31 s
    of noise (1000 tokens at 25 a second, the invalid ones dropped)."""
    short = _seconds(start.url, SHORT_TEXT)
    long = _seconds(start.url, LONG_TEXT)
    assert 0.3 <= short <= 3.0
    # about proportional to the text: ~14 characters a second of speech (tokens the random model samples outside
    # the speech vocabulary are dropped, so a little less)
    ratio = len(LONG_TEXT) / len(SHORT_TEXT)
    assert 0.5 * ratio <= long / short <= 2 * ratio
    assert 0.3 * len(LONG_TEXT) / 14 <= long <= 2 * len(LONG_TEXT) / 14
    # requests add no warning either (vLLM's notes about T3's tokenizer-less, embeddings-only prompts)
    assert loud_lines(start.log.read_text()) == []


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server process in a session of its own, so that it and vLLM's engine core stop together wherever their
    start has got to."""
    with log.open("w") as out:
        server = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield server
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=60)


def wait_for(server: subprocess.Popen, log: Path, done: Callable[[str], bool], what: str, timeout: float = 300) -> str:
    """The log once `done(log text)` holds."""
    deadline = time.monotonic() + timeout
    while not done(text := log.read_text()):
        assert server.poll() is None, text[-3000:]
        assert time.monotonic() < deadline, f"{what}: not seen in\n{text[-3000:]}"
        time.sleep(1)
    return text


def test_a_model_that_fails_to_load_logs_one_error_line_and_no_ready_line(
    half_written_checkpoint: Path, tmp_path: Path
) -> None:
    broken = half_written_checkpoint
    port = free_port()
    log = tmp_path / "server.log"
    args = [sys.executable, "-m", "chatterbox_vllm.cli", "serve", "--model", str(broken)]
    with started(args, _env(tmp_path, port), log) as server:

        def failed(text: str) -> bool:
            with contextlib.suppress(httpx.TransportError):
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                return health["status"] == "error" and " ERROR " in text
            return False

        text = wait_for(server, log, failed, "/health status error and an ERROR line")
    (error,) = loud_lines(text)
    assert LOG_LINE.match(error)["level"] == "ERROR"
    assert "chatterbox-english" in error and "failed to load" in error and "s3gen.safetensors" in error
    assert ready_lines(text) == []


def test_debug_shows_the_notices(tmp_path: Path) -> None:
    """At debug nothing is dropped: vLLM's chunked-prefill notice (prompts are prefilled whole on CPU on purpose),
    transformers' note on T3's M-RoPE key and uvicorn's own start lines show, in the log's format. The server is
    stopped once they have (the engine need not finish starting)."""
    port = free_port()
    log = tmp_path / "server.log"
    wanted = [
        re.compile(r" WARNING vllm\.engine\.arg_utils: This model does not officially support disabling chunked"),
        re.compile(r" WARNING transformers\.modeling_rope_utils: Unrecognized keys .*mrope_section"),
        re.compile(r" INFO uvicorn\.error: Application startup complete"),
    ]
    with started([*_args(), "--log-level", "debug"], _env(tmp_path, port), log) as server:
        wait_for(server, log, lambda text: all(pattern.search(text) for pattern in wanted), "the notices at debug")
