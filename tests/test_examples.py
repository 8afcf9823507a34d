"""Every script in examples/ runs against a live server (random-tiny checkpoint, the CPU build of vLLM)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("examples-server")
    port = _free_port()
    env = {**os.environ, "CHATTERBOX_MODEL": "random-tiny", "CHATTERBOX_CACHE_DIR": str(tmp / "cache"),
           "CHATTERBOX_MAX_NEW_TOKENS": "40", "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "512",
           "CHATTERBOX_HOST": "127.0.0.1", "CHATTERBOX_PORT": str(port), "CHATTERBOX_VOICES_DIR": str(tmp / "voices")}  # fmt: skip
    log = (tmp / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "chatterbox_vllm.cli", "serve"], stdout=log,
                              stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def run_example(args: list[str], url: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BASE_URL": url, "OUT": str(out)}
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=out)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_curl_speech(live_server: str, tmp_path: Path) -> None:
    result = run_example(["bash", str(EXAMPLES / "curl_speech.sh")], live_server, tmp_path)
    assert "audio events" in result.stdout
    samples, rate = soundfile.read(tmp_path / "hello.wav")
    assert rate == 24000 and len(samples) > 0
    assert (tmp_path / "hello.mp3").stat().st_size > 1000 and (tmp_path / "hello.pcm").stat().st_size > 1000


def test_openai_client(live_server: str, tmp_path: Path) -> None:
    run_example([sys.executable, str(EXAMPLES / "openai_client.py")], live_server, tmp_path)
    assert (tmp_path / "client.mp3").stat().st_size > 1000
    assert soundfile.info(tmp_path / "client_streamed.wav").samplerate == 24000


def test_clone_voice(live_server: str, tmp_path: Path) -> None:
    t = np.arange(48000) / 24000
    clip = io.BytesIO()
    soundfile.write(clip, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 24000, format="WAV")
    (tmp_path / "clip.wav").write_bytes(clip.getvalue())
    result = run_example([sys.executable, str(EXAMPLES / "clone_voice.py"), "clip.wav"], live_server, tmp_path)
    assert "deleted voice 'example-voice'" in result.stdout
    assert (tmp_path / "example-voice.mp3").stat().st_size > 1000
    voices = [v["id"] for v in httpx.get(f"{live_server}/v1/audio/voices").json()["voices"]]
    assert "example-voice" not in voices


def test_multilingual_batch_on_an_english_server(live_server: str, tmp_path: Path) -> None:
    result = run_example([sys.executable, str(EXAMPLES / "multilingual_batch.py")], live_server, tmp_path)
    assert (tmp_path / "speech_en.mp3").is_file()
    assert "fr: skipped" in result.stdout  # the English model refuses other languages with a clear 400
