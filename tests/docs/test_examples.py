"""Every script in examples/ runs against a live server (random-tiny checkpoint, the CPU build of vLLM).

The `live_server` fixture (tests/conftest.py) is one `chatterbox-vllm serve` process shared with the docs tests."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import av
import httpx
import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


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


def test_long_form_job(live_server: str, tmp_path: Path) -> None:
    """A Markdown chapter file in, an m4b with its two chapters and subtitles with a cue per piece out."""
    (tmp_path / "story.md").write_text(
        "# The Harbour\n\nThe boats came in at dawn. Gulls followed them.\n\n"
        "# The Market\n\nBy noon the fish were sold, and the square was quiet again.\n"
    )
    result = run_example([sys.executable, str(EXAMPLES / "long_form_job.py"), "story.md"], live_server, tmp_path)
    assert "deleted job job_" in result.stdout and "2 chapters" in result.stdout
    with av.open(str(tmp_path / "story.m4b")) as container:
        titles = [chapter["metadata"].get("title") for chapter in container.chapters()]
        seconds = sum(frame.samples for frame in container.decode(audio=0)) / 24000
    assert titles == ["The Harbour", "The Market"]
    cues = [line for line in (tmp_path / "story.vtt").read_text().splitlines() if " --> " in line]
    assert len(cues) >= 4  # each title is a piece of its own, then the text of its chapter
    last_end = cues[-1].split(" --> ")[1].split()[0]
    h, m, s = last_end.split(":")
    assert abs(int(h) * 3600 + int(m) * 60 + float(s) - seconds) < 0.1  # the cues reach the end of the audio
    assert (tmp_path / "story.srt").read_text().count(" --> ") == len(cues)
