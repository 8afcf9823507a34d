"""The multilingual model over HTTP: language codes as voices, language_id, and their errors (PyTorch engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_utils import Server, make_settings, start_server, stop_server

from chatterbox_vllm.tts import ChatterboxTTS


@pytest.fixture(scope="module")
def mtl_server(multilingual_tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tts = ChatterboxTTS.from_local(multilingual_tiny_checkpoint, device="cpu", engine="torch")
    running = start_server(make_settings(tmp_path_factory.mktemp("mtl"), model="multilingual"), tts)
    yield running
    stop_server(running)
    tts.close()


def say(server: Server, **body) -> httpx.Response:
    payload = {"model": "chatterbox-multilingual", "input": "Bonjour tout le monde.", "voice": "fr",
               "response_format": "pcm", "seed": 0, "temperature": 0, **body}  # fmt: skip
    return httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=120)


def test_language_codes_are_voices(mtl_server: Server) -> None:
    voices = [v["id"] for v in httpx.get(f"{mtl_server.url}/v1/audio/voices").json()["voices"]]
    assert {"default", "alloy", "fr", "ja", "zh"} <= set(voices)
    response = say(mtl_server)
    assert response.status_code == 200 and len(response.content) > 0
    # the same text in another language tag is another token sequence, so other audio
    assert say(mtl_server, voice="de").content != response.content


def test_language_id_wins_over_the_voice(mtl_server: Server) -> None:
    as_french = say(mtl_server, voice="fr").content
    assert say(mtl_server, voice="de", language_id="fr").content == as_french
    assert say(mtl_server, voice="alloy", language_id="fr").content == as_french  # alloy = the built-in voice
    assert say(mtl_server, voice="alloy", language_id="pt-BR").status_code == 200


def test_unsupported_language_is_a_400_listing_them(mtl_server: Server) -> None:
    response = say(mtl_server, voice="alloy", language_id="xx")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "language_id" and "fr" in error["message"] and "zh" in error["message"]


def test_japanese_and_chinese_text(mtl_server: Server) -> None:
    for voice, text in (("ja", "こんにちは、世界。"), ("zh", "你好，世界。")):
        response = say(mtl_server, voice=voice, input=text)
        assert response.status_code == 200
        assert np.abs(np.frombuffer(response.content, dtype="<i2")).max() > 100
