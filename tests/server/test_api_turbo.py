"""Chatterbox-Turbo over HTTP (PyTorch engine; the vLLM GPT-2 engine is checked in tests/engine): tags reach T3,
Turbo's sampling defaults and settings, a streamed request, Turbo's voice-clip minimum. (Tags sent to the English
model: tests/server/test_api.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_utils import Server, assert_error, make_settings, sine_clip, start_server, stop_server

from chatterbox_vllm.tts import ChatterboxTTS


@pytest.fixture(scope="module")
def turbo_server(turbo_tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tts = ChatterboxTTS.from_local(turbo_tiny_checkpoint, device="cpu", engine="torch")
    running = start_server(make_settings(tmp_path_factory.mktemp("turbo"), model="turbo", max_new_tokens=40), tts)
    yield running
    stop_server(running)
    tts.close()


def say(server: Server, **body) -> httpx.Response:
    payload = {"model": "chatterbox-turbo", "input": "Well [laugh] that was fun.", "voice": "alloy",
               "response_format": "pcm", "seed": 0, **body}  # fmt: skip
    return httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=120)


def pcm(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2")


def test_turbo_speaks_tags_and_lists_its_model(turbo_server: Server) -> None:
    ids = [m["id"] for m in httpx.get(f"{turbo_server.url}/v1/models").json()["data"]]
    assert "chatterbox-turbo" in ids and "chatterbox-english" not in ids  # only what is loaded
    with_tag = say(turbo_server)
    assert "x-chatterbox-warning" not in with_tag.headers  # Turbo speaks its tags
    assert with_tag.headers["x-chatterbox-model"] == "chatterbox-turbo"
    audio = pcm(with_tag)
    assert np.abs(audio).max() > 100
    np.testing.assert_array_equal(pcm(say(turbo_server)), audio)  # seeded: the same audio again
    assert not np.array_equal(pcm(say(turbo_server, input="Well that was fun.")), audio)  # the tag is read


def test_turbo_takes_its_own_settings_and_ignores_cfg(turbo_server: Server) -> None:
    base = pcm(say(turbo_server))
    assert not np.array_equal(pcm(say(turbo_server, top_p=0.3)), base)  # settings reach Turbo's sampler
    np.testing.assert_array_equal(pcm(say(turbo_server, cfg_weight=2.0, min_p=0.3)), base)  # ignored, as upstream
    assert pcm(say(turbo_server, top_k=1)).size > 0
    assert_error(say(turbo_server, top_k=-1), 400, "top_k")


def test_turbo_streams_and_clones_long_enough_voices(turbo_server: Server) -> None:
    with httpx.stream("POST", f"{turbo_server.url}/v1/audio/speech", timeout=120, json={
        "model": "tts-1", "input": "First sentence here. And a second one [sigh] after it.", "voice": "alloy",
        "response_format": "pcm", "seed": 1,
    }) as response:  # fmt: skip
        assert response.status_code == 200
        chunks = [c for c in response.iter_bytes() if c]
    assert len(b"".join(chunks)) > 0
    upload = httpx.post(f"{turbo_server.url}/v1/audio/voices", data={"name": "short voice", "consent": "yes"},
                        files={"audio_sample": ("v.wav", sine_clip(3.0), "audio/wav")}, timeout=60)  # fmt: skip
    assert upload.status_code == 201, upload.text
    # analysed at upload: the answer already says this model cannot use the clip
    warning = upload.headers["x-chatterbox-warning"]
    assert "chatterbox-turbo cannot use voice 'short-voice'" in warning and "at least 5.0 s" in warning
    refused = say(turbo_server, voice=upload.json()["id"])
    assert_error(refused, 400, "voice")
    assert "at least 5.0 s" in refused.json()["error"]["message"]
