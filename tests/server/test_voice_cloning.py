"""Cloning over real HTTP: uploads work with no setting, a clone may take an OpenAI voice's name, and a new clone
is analysed at upload (stored per model, so no request analyses it again; a stored analysis of another model, or
a damaged one, is redone)."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from chatterbox_vllm.conditioning import VoiceConditioner
from chatterbox_vllm.conditioning_store import ConditioningStore
from chatterbox_vllm.tts import ChatterboxTTS

from server_utils import Server, assert_error, make_settings, start_server, stop_server
from support.conditionals import assert_same_conditionals

MODEL = "chatterbox-english"


def voice_clip(seed: int, seconds: float = 3.0, rate: int = 24_000) -> bytes:
    """A WAV clip distinct for each seed (a chirp with a little noise), so no earlier test has analysed it."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * ((130 + 7 * seed) * t + 250 * t**2))
    wave += 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def upload(server: Server, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/voices", data={"name": name, "consent": "yes"},
                      files={"audio_sample": ("clip.wav", data, "audio/wav")}, timeout=120)  # fmt: skip


def pcm(server: Server, voice: str) -> bytes:
    response = httpx.post(f"{server.url}/v1/audio/speech", timeout=120, json={
        "model": "tts-1", "input": "Hello there.", "voice": voice, "seed": 0, "response_format": "pcm"})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.content


def conditioning_counts(server: Server) -> dict[str, float]:
    """chatterbox_voice_conditioning_total of the English model by source, as /metrics serves it."""
    text = httpx.get(f"{server.url}/metrics").text
    pattern = rf'^chatterbox_voice_conditioning_total\{{model="{MODEL}",source="(\w+)"\}} ([0-9.e+]+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


def counted_since(server: Server, before: dict[str, float]) -> dict[str, float]:
    after = conditioning_counts(server)
    return {source: after[source] - before.get(source, 0.0) for source in ("memory", "stored", "computed")}


@pytest.fixture
def own_server(english_tts: ChatterboxTTS, tmp_path: Path) -> Iterator[Server]:
    """A server of its own voices directory (tests here change what `alloy` means)."""
    running = start_server(make_settings(tmp_path), english_tts)
    yield running
    stop_server(running)


def voices_dir(server: Server) -> Path:
    return Path(server.settings.voices_dir)


# ------------------------------------------------------------------------------------------- default directory
def test_uploads_work_without_a_voices_setting(
    english_tts: ChatterboxTTS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the platform's user data directory, here
    settings = make_settings(tmp_path, voices_dir=None)
    expected = tmp_path / "data" / "chatterbox-vllm" / "voices"
    assert settings.resolved_voices_dir() == expected
    running = start_server(settings, english_tts)
    try:
        assert expected.is_dir()  # created at start
        created = upload(running, "Home Voice", voice_clip(seed=10))
        assert created.status_code == 201, created.text
        assert (expected / "home-voice.wav").is_file()
        assert len(pcm(running, "home-voice")) > 0
    finally:
        stop_server(running)


def test_an_unusable_voices_directory_leaves_speech_working(english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the voices directory's parent should be")
    running = start_server(make_settings(tmp_path, voices_dir=str(blocker / "voices")), english_tts)
    try:
        assert len(pcm(running, "alloy")) > 0
        assert "alloy" in [v["id"] for v in httpx.get(f"{running.url}/v1/audio/voices").json()["voices"]]
        error = assert_error(upload(running, "nowhere", voice_clip(seed=11)), 500)
        assert error["code"] == "voices_dir_unwritable" and "CHATTERBOX_VOICES_DIR" in error["message"]
    finally:
        stop_server(running)


# ------------------------------------------------------------------------------------------ OpenAI names
def test_a_clone_named_alloy_speaks_for_alloy_until_deleted(own_server: Server) -> None:
    built_in = pcm(own_server, "alloy")
    assert pcm(own_server, "default") == built_in

    created = upload(own_server, "alloy", voice_clip(seed=12))
    assert created.status_code == 201, created.text
    assert created.json() == {"id": "alloy", "name": "alloy"}
    listed = httpx.get(f"{own_server.url}/v1/audio/voices").json()["voices"]
    assert [v["id"] for v in listed].count("alloy") == 1
    assert next(v for v in listed if v["id"] == "alloy")["kind"] == "custom"
    assert next(v for v in listed if v["id"] == "nova")["kind"] == "openai"

    cloned = pcm(own_server, "alloy")
    assert cloned != built_in  # every request naming alloy gets the clone
    assert pcm(own_server, "ALLOY") == cloned
    assert pcm(own_server, "default") == built_in and pcm(own_server, "nova") == built_in
    assert_error(upload(own_server, "Alloy", voice_clip(seed=13)), 409, "name")

    deleted = httpx.delete(f"{own_server.url}/v1/audio/voices/alloy")
    assert deleted.json() == {"id": "alloy", "deleted": True}
    assert pcm(own_server, "alloy") == built_in  # the built-in meaning is back
    listed = httpx.get(f"{own_server.url}/v1/audio/voices").json()["voices"]
    assert next(v for v in listed if v["id"] == "alloy")["kind"] == "openai"
    assert not (voices_dir(own_server) / ".conditioning" / "alloy").exists()
    assert_error(httpx.delete(f"{own_server.url}/v1/audio/voices/alloy"), 400, "voice_id")


def test_default_and_language_codes_stay_reserved(own_server: Server) -> None:
    error = assert_error(upload(own_server, "default", voice_clip(seed=14)), 400, "name")
    assert "built-in voice" in error["message"]
    error = assert_error(upload(own_server, "fr", voice_clip(seed=14)), 400, "name")
    assert "language code" in error["message"]


# ------------------------------------------------------------------------------------- analysed at upload
def test_an_upload_is_analysed_and_stored_before_it_answers(english_tts: ChatterboxTTS, own_server: Server) -> None:
    before = conditioning_counts(own_server)
    assert set(before) == {"memory", "stored", "computed"}  # served from the start, at 0 for a new server's model
    created = upload(own_server, "Fresh Voice", voice_clip(seed=15))
    assert created.status_code == 201 and "x-chatterbox-warning" not in created.headers
    assert counted_since(own_server, before) == {"memory": 0, "stored": 0, "computed": 1}

    clip = voices_dir(own_server) / "fresh-voice.wav"
    stored_path = voices_dir(own_server) / ".conditioning" / "fresh-voice" / "english.safetensors"
    assert stored_path.is_file()
    store = ConditioningStore(voices_dir(own_server), "english", english_tts.conditioning_fingerprint)
    stored = store.load("fresh-voice", hashlib.sha256(clip.read_bytes()).hexdigest(), "cpu")
    assert stored is not None
    assert_same_conditionals(stored, english_tts.voices.compute(clip.read_bytes()))

    before = conditioning_counts(own_server)
    assert len(pcm(own_server, "fresh-voice")) > 0
    assert counted_since(own_server, before) == {"memory": 1, "stored": 0, "computed": 0}  # nothing analysed


def _drop_in(server: Server, stem: str, seed: int) -> tuple[Path, str]:
    clip = voices_dir(server) / f"{stem}.wav"
    clip.write_bytes(voice_clip(seed))
    return clip, hashlib.sha256(clip.read_bytes()).hexdigest()


def _fresh_analysis(tts: ChatterboxTTS, clip: Path):
    """The clip analysed by the model's networks outside its cache (the server's cache stays cold for it)."""
    conditioner = VoiceConditioner(tts.voice_encoder, tts.s3gen, prompt_tokens=tts.voices.prompt_tokens, device=tts.device)
    return conditioner.compute(clip.read_bytes())


def test_a_stored_analysis_is_used_as_after_a_restart(english_tts: ChatterboxTTS, own_server: Server) -> None:
    clip, sha = _drop_in(own_server, "kept", seed=16)
    store = ConditioningStore(voices_dir(own_server), "english", english_tts.conditioning_fingerprint)
    store.save("kept", sha, _fresh_analysis(english_tts, clip))
    before = conditioning_counts(own_server)
    assert len(pcm(own_server, "kept")) > 0
    assert counted_since(own_server, before) == {"memory": 0, "stored": 1, "computed": 0}


@pytest.mark.parametrize("case", ["another model", "damaged"])
def test_a_stored_analysis_of_another_model_or_damaged_is_redone(
    english_tts: ChatterboxTTS, own_server: Server, case: str
) -> None:
    stem = case.replace(" ", "-")
    clip, sha = _drop_in(own_server, stem, seed=17 if case == "damaged" else 18)
    store = ConditioningStore(voices_dir(own_server), "english", english_tts.conditioning_fingerprint)
    if case == "another model":  # the built-in voice's conditionals, filed under another model's fingerprint
        ConditioningStore(voices_dir(own_server), "english", "f" * 64).save(stem, sha, english_tts.default_conds)
    else:
        store.path(stem).parent.mkdir(parents=True)
        store.path(stem).write_bytes(b"\x00" * 100)
    before = conditioning_counts(own_server)
    assert len(pcm(own_server, stem)) > 0
    assert counted_since(own_server, before) == {"memory": 0, "stored": 0, "computed": 1}
    rewritten = store.load(stem, sha, "cpu")
    assert rewritten is not None  # now filed for this model
    assert_same_conditionals(rewritten, _fresh_analysis(english_tts, clip))
