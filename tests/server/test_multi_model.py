"""Several models in one server: a request's `model` field picks one (issue 9), over real HTTP.

The English model runs in the session's vLLM engine and Turbo in the PyTorch engine beside it, both on tiny
random-weight checkpoints; what tells the two apart in the answers is what only one of them does (Turbo speaks
paralinguistic tags and takes `top_k`; the English model removes the tags with a warning and refuses `top_k`).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from chatterbox_vllm.tts import ChatterboxTTS

from server_utils import (
    Server, assert_error, make_settings, one_request_in_progress, start_server, stop_server, wait_idle,
)

TAGGED = "Well [laugh] that was fun."


@pytest.fixture(scope="module")
def turbo_tts(turbo_tiny_checkpoint: Path) -> Iterator[ChatterboxTTS]:
    tts = ChatterboxTTS.from_local(turbo_tiny_checkpoint, device="cpu", engine="torch")
    yield tts
    tts.close()


@pytest.fixture(scope="module")
def server(english_tts: ChatterboxTTS, turbo_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory):
    running = start_server(make_settings(tmp_path_factory.mktemp("two")), english_tts, extra=(turbo_tts,))
    yield running
    stop_server(running)


def say(server: Server, model: str, **body) -> httpx.Response:
    payload = {"model": model, "input": TAGGED, "voice": "alloy", "response_format": "pcm", "seed": 0, **body}
    return httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=120)


def pcm(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2")


def test_the_model_field_picks_the_model(server: Server) -> None:
    for alias in ("tts-1", "gpt-4o-mini-tts", "chatterbox", "chatterbox-english"):  # the default model
        answer = say(server, alias)
        assert answer.headers["x-chatterbox-model"] == "chatterbox-english", alias
        assert "[laugh]" in answer.headers["x-chatterbox-warning"]  # English has no tags: removed
    english = pcm(say(server, "tts-1"))
    turbo = say(server, "chatterbox-turbo")
    assert turbo.headers["x-chatterbox-model"] == "chatterbox-turbo"
    assert "x-chatterbox-warning" not in turbo.headers  # Turbo speaks its tags
    assert not np.array_equal(pcm(turbo), english)
    np.testing.assert_array_equal(pcm(say(server, "chatterbox-turbo")), pcm(turbo))  # seeded, the same model again
    # top_k is Turbo's alone: each model judges the request by its own controls
    assert say(server, "chatterbox-turbo", top_k=50).status_code == 200
    assert_error(say(server, "tts-1", top_k=50), 400, "top_k")


def test_listings_name_the_loaded_models_only(server: Server) -> None:
    ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert ids == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "chatterbox", "chatterbox-english", "chatterbox-turbo"]
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/audio/models").json()["models"]] == ids
    assert httpx.get(f"{server.url}/v1/models/chatterbox-turbo").json()["id"] == "chatterbox-turbo"
    assert_error(httpx.get(f"{server.url}/v1/models/chatterbox-nano"), 404, "model")
    missing = assert_error(say(server, "chatterbox-nano"), 400, "model")
    assert missing["code"] == "model_not_found" and "CHATTERBOX_EXTRA_MODELS=nano" in missing["message"]
    assert "chatterbox-turbo" in missing["message"]  # what is served instead
    assert_error(say(server, "tts-2"), 400, "model")


def test_health_and_languages_per_model(server: Server) -> None:
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["variant"] == "english"  # the top level: the default model
    assert [(m["id"], m["status"], m["engine"]) for m in body["models"]] == [
        ("chatterbox-english", "ready", "vllm"), ("chatterbox-turbo", "ready", "torch"),
    ]  # fmt: skip
    languages = httpx.get(f"{server.url}/v1/audio/languages", params={"model": "chatterbox-turbo"}).json()
    assert languages["languages"] == [{"code": "en", "name": "English"}]
    assert_error(httpx.get(f"{server.url}/v1/audio/languages", params={"model": "whisper-1"}), 400, "model")


def test_metrics_count_each_model(server: Server) -> None:
    def count(model: str) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        match = re.search(rf'^chatterbox_speech_requests_total{{model="{model}",status="ok"}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    before = {model: count(model) for model in ("chatterbox-english", "chatterbox-turbo")}
    pcm(say(server, "chatterbox-turbo"))
    assert count("chatterbox-turbo") == before["chatterbox-turbo"] + 1
    assert count("chatterbox-english") == before["chatterbox-english"]


def test_both_models_speak_at_once(server: Server) -> None:
    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            requests = [
                client.post(f"{server.url}/v1/audio/speech", json={
                    "model": model, "input": TAGGED, "voice": "alloy", "response_format": "pcm", "seed": 0,
                })  # fmt: skip
                for model in ("chatterbox-turbo", "tts-1", "chatterbox-turbo", "tts-1")
            ]
            return await asyncio.gather(*requests)

    answers = asyncio.run(both())
    assert [a.headers["x-chatterbox-model"] for a in answers] == [
        "chatterbox-turbo", "chatterbox-english", "chatterbox-turbo", "chatterbox-english",
    ]  # fmt: skip
    # Turbo's engine decodes one request at a time: its seeded audio is the same in a crowd as alone (vLLM's
    # batches may round differently from a request alone, so the English answers are only checked for audio)
    np.testing.assert_array_equal(pcm(answers[0]), pcm(say(server, "chatterbox-turbo")))
    assert all(np.abs(pcm(answer)).max() > 100 for answer in answers)


def test_the_models_share_the_request_places(
    english_tts: ChatterboxTTS, turbo_tts: ChatterboxTTS, tmp_path: Path
) -> None:
    busy = start_server(make_settings(tmp_path, max_queue=1, max_input_chars=100_000), english_tts, extra=(turbo_tts,))
    try:
        with one_request_in_progress(busy, model="tts-1"):
            error = assert_error(say(busy, "chatterbox-turbo"), 429)  # the other model, the same places
            assert error["type"] == "rate_limit_error"
        wait_idle(busy)
        assert say(busy, "chatterbox-turbo").status_code == 200
    finally:
        stop_server(busy)


def test_models_load_at_start_and_one_that_cannot_does_not_stop_the_others(
    english_tiny_checkpoint: Path, turbo_tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """CHATTERBOX_EXTRA_MODELS through the app's own loading: a missing directory and a second English model
    are reported in /health, the models that can load serve."""
    english = tmp_path / "english"
    shutil.copytree(english_tiny_checkpoint, english)
    extra = [str(turbo_tiny_checkpoint), str(tmp_path / "nowhere"), str(english_tiny_checkpoint)]
    settings = make_settings(tmp_path, model=str(english), extra_models=extra, engine="torch", device="cpu")
    running = start_server(settings, tts=None)
    try:
        deadline = time.monotonic() + 180
        while (health := httpx.get(f"{running.url}/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert health.status_code == 503 and health.json()["status"] == "error"
        models = health.json()["models"]
        assert [(m["id"], m["status"]) for m in models] == [
            ("chatterbox-english", "ready"), ("chatterbox-turbo", "ready"), (None, "error"), (None, "error"),
        ]  # fmt: skip
        assert "nowhere" in models[2]["error"] and "nor a directory" in models[2]["error"]
        assert "second english model" in models[3]["error"]
        assert say(running, "chatterbox-turbo").headers["x-chatterbox-model"] == "chatterbox-turbo"
        assert say(running, "tts-1").headers["x-chatterbox-model"] == "chatterbox-english"
    finally:
        stop_server(running)


def test_a_language_voice_is_refused_by_a_model_that_does_not_speak_it(
    multilingual_tiny_checkpoint: Path, turbo_tts: ChatterboxTTS, tmp_path: Path
) -> None:
    multilingual = ChatterboxTTS.from_local(multilingual_tiny_checkpoint, device="cpu", engine="torch")
    running = start_server(make_settings(tmp_path, model="multilingual"), multilingual, extra=(turbo_tts,))
    try:
        assert say(running, "tts-1", voice="fr", input="Bonjour.").status_code == 200  # one library, both models
        refused = assert_error(say(running, "chatterbox-turbo", voice="fr"), 400, "voice")
        assert "the built-in voice speaking French, which the turbo model does not speak" in refused["message"]
        # which loaded model speaks it, and how to ask for it
        assert refused["message"].endswith('French is spoken by the model chatterbox-multilingual: send "model": '
                                           '"chatterbox-multilingual"')  # fmt: skip
        assert refused["code"] == "unsupported_language"
        asked = assert_error(say(running, "chatterbox-turbo", voice="alloy", language_id="de"), 400, "language_id")
        assert "the turbo model speaks English only" in asked["message"]
        assert "German is spoken by the model chatterbox-multilingual" in asked["message"]
    finally:
        stop_server(running)
        multilingual.close()


def test_language_advice_names_the_speaker_or_how_to_load_one() -> None:
    """What a refusal of French adds, for each state the multilingual model can be in (no model is loaded: the
    advice reads only the states)."""
    from chatterbox_vllm.server.registry import ModelRegistry, ServedModel

    english = ServedModel(model="english", variant="english")
    alone = ModelRegistry([english]).language_advice("fr")
    assert alone.startswith("French needs the multilingual model, which this server has not loaded")
    assert "CHATTERBOX_MODEL=multilingual" in alone and "CHATTERBOX_EXTRA_MODELS=multilingual" in alone
    failed = ServedModel(model="multilingual", variant="multilingual", error="no weights")
    assert "failed to load on this server (GET /health says why)" in ModelRegistry([english, failed]).language_advice("fr")
    loading = ServedModel(model="multilingual", variant="multilingual")
    assert ModelRegistry([english, loading]).language_advice("pt") == (
        'Portuguese is spoken by the model chatterbox-multilingual: send "model": "chatterbox-multilingual"'
    )
