"""The speech API over real HTTP (uvicorn on loopback), with httpx and the official OpenAI client."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from chatterbox_vllm.server.synthesis import PAUSE_SECONDS
from chatterbox_vllm.tts import ChatterboxTTS

from server_utils import (
    PIECE_SECONDS,
    Server,
    assert_error,
    decode,
    make_settings,
    one_request_in_progress,
    sine_clip,
    start_server,
    stop_server,
    wait_idle,
)

SENTENCE = "Hello there, this is a test."


def speech(server: Server, timeout: float = 120, **body) -> httpx.Response:
    payload = {"model": "tts-1", "input": SENTENCE, "voice": "alloy", "seed": 0, **body}
    return httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=timeout)


# ------------------------------------------------------------------------------------------------ formats
@pytest.fixture(scope="module")
def pcm_reference(server: Server) -> np.ndarray:
    """The request's audio as raw samples: other formats must decode to the same length."""
    samples, _ = decode(speech(server, response_format="pcm").content, "pcm")
    assert len(samples) > 0.5 * 24000  # random weights: ~40 tokens, minus the ids S3Gen does not take
    return samples


# Encoder padding the container cannot mark (AAC's 1024-sample lead-in in ADTS, LAME's delay in a streamed MP3).
PADDING = {"mp3": 0.08, "aac": 0.08, "opus": 0.03}


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("aac", "audio/aac"), ("flac", "audio/flac"),
     ("wav", "audio/wav"), ("pcm", "audio/pcm")],
)  # fmt: skip
def test_every_format_decodes_to_the_expected_audio(
    server: Server, pcm_reference: np.ndarray, fmt: str, content_type: str
) -> None:
    response = speech(server, response_format=fmt)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type)
    samples, rate = decode(response.content, fmt)
    assert rate == (48000 if fmt == "opus" else 24000)
    assert samples.ndim == 1
    seconds, expected = len(samples) / rate, len(pcm_reference) / 24000
    assert expected - 0.01 <= seconds <= expected + PADDING.get(fmt, 0.0), (fmt, seconds, expected)
    if fmt in ("wav", "flac", "pcm"):
        assert np.array_equal(samples, pcm_reference)  # lossless and the same seed: the same samples
    assert np.abs(samples).max() > 0.01


def test_mp3_is_the_default(server: Server) -> None:
    response = speech(server)
    assert response.headers["content-type"].startswith("audio/mpeg")
    assert response.content[:3] == b"ID3" or response.content[0] == 0xFF


def test_same_seed_same_audio(server: Server) -> None:
    assert speech(server, response_format="pcm").content == speech(server, response_format="pcm").content


@pytest.mark.parametrize("speed", [0.5, 2.0, 4.0])
def test_speed_changes_duration(server: Server, pcm_reference: np.ndarray, speed: float) -> None:
    samples, rate = decode(speech(server, response_format="wav", speed=speed).content, "wav")
    expected = len(pcm_reference) / 24000 / speed
    assert abs(len(samples) / rate - expected) < 0.05 * expected + 0.02


def test_long_input_is_spoken_in_pieces_with_pauses(server: Server) -> None:
    text = " ".join(["This sentence is one of several."] * 30)  # > chunk_chars: several pieces
    samples, rate = decode(speech(server, input=text, response_format="pcm").content, "pcm")
    pause = round(PAUSE_SECONDS * rate)
    silent = np.flatnonzero(np.convolve(samples == 0, np.ones(pause, dtype=int), mode="valid") == pause)
    starts = [int(s) for i, s in enumerate(silent) if i == 0 or s != silent[i - 1] + 1]  # one per pause
    assert len(starts) >= 2  # >= 3 pieces, a pause between each two
    edges = [0] + [e for s in starts for e in (s, s + pause)] + [len(samples)]
    for begin, end in zip(edges[::2], edges[1::2]):
        body = samples[begin:end]
        assert len(body) > 0.3 * rate and np.abs(body).max() > 0.1  # speech in every piece
        # faded edges: the pieces start and end at silence, so there is no click where they meet
        assert np.abs(body[:5]).max() < 0.05 and np.abs(body[-5:]).max() < 0.05


# ---------------------------------------------------------------------------------------------- streaming
def test_sse_events(server: Server) -> None:
    with httpx.stream(
        "POST", f"{server.url}/v1/audio/speech", timeout=120,
        json={"model": "gpt-4o-mini-tts", "input": SENTENCE, "voice": {"id": "alloy"}, "response_format": "pcm",
              "stream_format": "sse", "seed": 0},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) >= 2
    assert events[-1]["type"] == "speech.audio.done"
    usage = events[-1]["usage"]
    assert usage["output_tokens"] == 40 and usage["input_tokens"] > 2  # 40 = CHATTERBOX_MAX_NEW_TOKENS here
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert pcm == speech(server, response_format="pcm").content  # same seed, same audio


def test_sse_segments_time_each_piece(server: Server) -> None:
    # Three pieces (chunk_chars 300): each gets a segment event whose times are exact sample offsets of the audio.
    sentences = [f"Sentence {i} runs long enough that two of them fill most of one piece of three hundred characters."
                 for i in range(10)]  # fmt: skip
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=300, json={
        "model": "tts-1", "input": " ".join(sentences), "voice": "alloy", "response_format": "pcm",
        "stream_format": "sse", "stream_segments": True, "seed": 0,
    }) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    segments = [e for e in events if e["type"] == "speech.audio.segment"]
    assert events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    seconds = len(pcm) / 2 / 24000
    assert [s["index"] for s in segments] == list(range(len(segments))) and len(segments) >= 3
    assert " ".join(s["text"] for s in segments) == " ".join(sentences)  # every word in one piece, in order
    assert segments[0]["start"] == 0 and abs(segments[-1]["end"] - seconds) < 1e-3
    for before, after in zip(segments, segments[1:]):
        assert before["start"] < before["end"]
        assert abs(after["start"] - before["end"] - PAUSE_SECONDS) < 1e-3  # the pause between pieces, nothing else
    # each segment's audio is speech, each pause silence: the times point at the right samples
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768
    for segment in segments:
        body = samples[round(segment["start"] * 24000):round(segment["end"] * 24000)]
        assert np.abs(body).max() > 0.1
    for before in segments[:-1]:
        gap = samples[round(before["end"] * 24000) + 2:round((before["end"] + PAUSE_SECONDS) * 24000) - 2]
        assert np.abs(gap).max() == 0


def test_sse_segments_need_sse(server: Server) -> None:
    assert_error(speech(server, stream_segments=True), 400, param="stream_segments")


def _audio_seconds_made(server: Server) -> float:
    """The server's own count of audio it has synthesised (not sent): chatterbox_audio_seconds_total."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('chatterbox_audio_seconds_total{model="chatterbox-english"} '):
            return float(line.split()[1])
    raise AssertionError("chatterbox_audio_seconds_total missing from /metrics")


def test_audio_streams_before_generation_ends(server: Server) -> None:
    # Structural, not a timing ratio: when the first bytes reach the client, the server must have synthesised
    # only a small part of the request's audio. A server that rendered everything before sending fails this
    # however fast or slow the machine is.
    text = " ".join(f"Sentence number {i} is here to make the input long enough." for i in range(40))
    before = _audio_seconds_made(server)
    made_at_first_bytes = None
    received = 0
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=600,
                      json={"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"}) as response:
        for chunk in response.iter_bytes():
            if chunk and made_at_first_bytes is None:
                made_at_first_bytes = _audio_seconds_made(server) - before
            received += len(chunk)
    made_total = _audio_seconds_made(server) - before
    assert made_at_first_bytes is not None and received > 0
    assert made_total > 0
    assert made_at_first_bytes < 0.5 * made_total, (made_at_first_bytes, made_total)


def test_one_sentence_streams_before_its_tokens_are_done(server: Server) -> None:
    # One piece (Open WebUI sends a sentence a request): audio must leave after its first tokens, not its last.
    before = _audio_seconds_made(server)
    made_at_first_bytes = None
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=300,
                      json={"model": "tts-1", "input": SENTENCE, "voice": "alloy", "response_format": "pcm"}) as response:
        for chunk in response.iter_bytes():
            if chunk and made_at_first_bytes is None:
                made_at_first_bytes = _audio_seconds_made(server) - before
    made_total = _audio_seconds_made(server) - before
    assert 0.5 * PIECE_SECONDS < made_total <= PIECE_SECONDS + 1e-6  # (ids >= 6561 that T3 samples make no audio)
    assert made_at_first_bytes is not None and made_at_first_bytes < 0.5 * made_total, (made_at_first_bytes, made_total)


def test_pieces_of_one_input_decode_together(server: Server, english_tts: ChatterboxTTS) -> None:
    text = " ".join(f"Sentence number {i} is here to make the input long enough." for i in range(40))
    running: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            running.append(english_tts.engine.num_unfinished_requests())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = speech(server, input=text, response_format="pcm")
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 200
    # several T3 requests of this one input were in the engine together, never more than parallel_pieces (nor the
    # T3 batch size)
    window = min(server.settings.parallel_pieces, server.settings.limits().max_batch_size)
    assert 2 <= max(running) <= window, (max(running), window)


def test_client_disconnect_stops_generation(server: Server, english_tts: ChatterboxTTS) -> None:
    text = " ".join(f"Sentence number {i} is here to make the input long enough." for i in range(20))
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=300,
                      json={"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"}) as response:
        next(response.iter_bytes())
    deadline = time.monotonic() + 30
    admission = server.app.state.admission
    while (admission.active or english_tts.engine.num_unfinished_requests()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert admission.active == 0
    assert english_tts.engine.num_unfinished_requests() == 0


# ------------------------------------------------------------------------------------------------- errors
def test_validation_errors_name_the_field_and_what_it_accepts(server: Server) -> None:
    missing = assert_error(httpx.post(f"{server.url}/v1/audio/speech", json={"model": "tts-1", "voice": "alloy"}),
                           400, "input")  # fmt: skip
    assert missing["code"] == "missing_required_parameter" and "'input'" in missing["message"]
    expected = {
        "speed": (9, "speed must be a number between 0.25 and 4; got 9"),
        "response_format": ("ogg", 'response_format must be one of mp3, opus, aac, flac, wav, pcm; got "ogg"'),
        "stream_format": ("json", 'stream_format must be one of audio, sse; got "json"'),
        "temperature": (-1, "temperature must be a number between 0 and 5; got -1"),
        "top_p": (0, "top_p must be a number above 0 and at most 1; got 0"),
        "seed": (-3, f"seed must be a whole number between 0 and {2**63 - 1}; got -3"),
        "top_k": (1.5, "top_k must be a whole number between 0 and 100000; got 1.5"),
        "exaggeration": ("high", 'exaggeration must be a number between 0 and 2; got "high"'),
    }
    for field, (value, message) in expected.items():
        error = assert_error(speech(server, **{field: value}), 400, field)
        assert (error["message"], error["code"]) == (message, "invalid_value"), field
    voice = assert_error(speech(server, voice=5), 400, "voice")  # not "voice.str": the union's member is no field
    assert "GET /v1/audio/voices" in voice["message"] and voice["message"].endswith("got 5")
    empty = assert_error(speech(server, input=""), 400, "input")
    assert "non-empty" in empty["message"]
    too_long = assert_error(speech(server, input="x" * 4097), 400, "input")
    assert too_long["code"] == "string_above_max_length" and "4096" in too_long["message"]
    assert_error(speech(server, model="whisper-1"), 400, "model")
    several = assert_error(speech(server, speed=9, temperature=-1), 400, "speed")
    assert several["message"].endswith("(also at fault: temperature)")
    bad = httpx.post(f"{server.url}/v1/audio/speech", content=b"{not json", timeout=30,
                     headers={"content-type": "application/json"})
    assert assert_error(bad, 400)["code"] == "invalid_json"
    empty_body = httpx.post(f"{server.url}/v1/audio/speech", content=b"", timeout=30,
                            headers={"content-type": "application/json"})  # fmt: skip
    assert "'None'" not in assert_error(empty_body, 400)["message"]


def test_unknown_voice_lists_the_first_known_ones(server: Server) -> None:
    error = assert_error(speech(server, voice="nobody"), 400, "voice")
    assert error["code"] == "voice_not_found"
    assert error["message"] == (
        "unknown voice 'nobody'; known voices: default, alloy, ash, ballad, coral, echo, fable, nova, onyx, sage "
        "and 4 more (GET /v1/audio/voices lists them all)"
    )
    typo = assert_error(speech(server, voice="novva"), 400, "voice")
    assert "did you mean 'nova'?" in typo["message"]


def test_a_language_the_english_model_does_not_speak_says_how_to_get_it(server: Server) -> None:
    for field, value in (("language_id", "fr"), ("voice", "fr"), ("voice", "pt-BR")):
        error = assert_error(speech(server, **{field: value}), 400, field)
        assert error["code"] == "unsupported_language", value
        assert "needs the multilingual model, which this server has not loaded" in error["message"]
        assert "CHATTERBOX_MODEL=multilingual" in error["message"]
        assert "CHATTERBOX_EXTRA_MODELS=multilingual" in error["message"]
        assert ("French" if value == "fr" else "Portuguese") in error["message"]
    assert speech(server, language_id="en-US", response_format="pcm").status_code == 200  # English in any tag
    assert assert_error(speech(server, language_id="xx"), 400, "language_id")["code"] == "unsupported_language"


def test_unknown_route_and_method(server: Server) -> None:
    assert assert_error(httpx.get(f"{server.url}/v1/nothing"), 404)["code"] == "not_found"
    wrong_method = assert_error(httpx.get(f"{server.url}/v1/audio/speech"), 405)
    assert wrong_method["message"] == "GET is not allowed on /v1/audio/speech; use POST"


def _upload(url: str, name: str = "ok", consent: str | None = "yes", data: bytes | None = None,
            filename: str = "a.wav") -> httpx.Response:  # fmt: skip
    form = {"name": name} | ({"consent": consent} if consent is not None else {})
    clip = sine_clip() if data is None else data
    return httpx.post(f"{url}/v1/audio/voices", data=form, files={"audio_sample": (filename, clip, "audio/wav")},
                      timeout=60)  # fmt: skip


def test_every_error_has_the_same_shape_a_code_and_the_field_at_fault(server: Server) -> None:
    """A sweep of bad requests over every route that refuses: each answer is OpenAI's error shape exactly (four
    keys, the status's type), with a code, and `param` where one field is at fault (asserted by assert_error)."""
    url = server.url
    taken = _upload(url, name="Sweep Taken")
    assert taken.status_code == 201, taken.text
    cases: list[tuple[str, httpx.Response, int, str | None, str]] = [
        ("blank input", speech(server, input=" \t\n "), 400, "input", "empty_input"),
        ("control characters only", speech(server, input="\x00\x07"), 400, "input", "empty_input"),
        ("speed", speech(server, speed=0), 400, "speed", "invalid_value"),
        ("voice object", speech(server, voice={"id": ""}), 400, "voice", "invalid_value"),
        ("no model", speech(server, model=""), 400, "model", "invalid_value"),
        ("top_k on English", speech(server, top_k=5), 400, "top_k", "unsupported_parameter"),
        ("unknown voice", speech(server, voice="nobody"), 400, "voice", "voice_not_found"),
        ("unknown model", speech(server, model="tts-9"), 400, "model", "model_not_found"),
        ("languages of an unknown model", httpx.get(f"{url}/v1/audio/languages", params={"model": "x"}), 400,
         "model", "model_not_found"),
        ("invalid voice name", _upload(url, name="../evil"), 400, "name", "invalid_voice_name"),
        ("reserved voice name", _upload(url, name="default"), 400, "name", "invalid_voice_name"),
        ("consent=no", _upload(url, consent="no"), 400, "consent", "consent_required"),
        ("consent missing", _upload(url, consent=None), 400, "consent", "missing_required_parameter"),
        ("not audio", _upload(url, data=b"\x00\x01 not audio" * 100), 400, "audio_sample", "invalid_audio"),
        ("too short", _upload(url, data=sine_clip(0.3)), 400, "audio_sample", "invalid_audio"),
        ("duplicate name", _upload(url, name="sweep taken"), 409, "name", "voice_exists"),
        ("delete a built-in", httpx.delete(f"{url}/v1/audio/voices/alloy"), 400, "voice_id", "voice_not_deletable"),
        ("delete a missing voice", httpx.delete(f"{url}/v1/audio/voices/nobody"), 404, "voice_id",
         "voice_not_found"),
        ("unknown model card", httpx.get(f"{url}/v1/models/nope"), 404, "model", "model_not_found"),
        ("unknown route", httpx.get(f"{url}/v2/speech"), 404, None, "not_found"),
        ("wrong method", httpx.put(f"{url}/v1/audio/voices"), 405, None, "method_not_allowed"),
        ("body not JSON", httpx.post(f"{url}/v1/audio/speech", content=b"{", headers={"content-type":
         "application/json"}), 400, None, "invalid_json"),
        ("body a list", httpx.post(f"{url}/v1/audio/speech", json=[1]), 400, None, "invalid_request"),
    ]  # fmt: skip
    for label, response, status, param, code in cases:
        error = assert_error(response, status, param)
        assert error["code"] == code, (label, error)
        if param is None:
            assert error["param"] is None, (label, error)
        assert response.headers["content-type"] == "application/json", label
    assert httpx.delete(f"{url}/v1/audio/voices/{taken.json()['id']}").status_code == 200


def test_an_unreadable_upload_says_which_formats_work_and_shows_no_internals(server: Server) -> None:
    error = assert_error(_upload(server.url, data=b"x" * 1800, filename="notes.wav"), 400, "audio_sample")
    assert error["message"] == "notes.wav is not audio this server can read; send a WAV, MP3, FLAC or OGG " \
        "(Vorbis or Opus) file"


def test_busy_server_answers_429(english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    busy = start_server(make_settings(tmp_path, max_queue=1, max_input_chars=100_000), english_tts)
    try:
        with one_request_in_progress(busy):
            assert busy.app.state.admission.active == 1
            second = speech(busy)
            error = assert_error(second, 429)
            assert second.headers["retry-after"] == "2" and error["type"] == "rate_limit_error"
        wait_idle(busy)
        assert speech(busy).status_code == 200  # the place was given back
    finally:
        stop_server(busy)


# -------------------------------------------------------------------------------------------------- auth
def test_auth(keyed_server: Server) -> None:
    url = keyed_server.url
    body = {"model": "tts-1", "input": SENTENCE, "voice": "alloy", "response_format": "pcm"}
    assert_error(httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60), 401)
    wrong = {"Authorization": "Bearer sk-wrong"}
    assert_error(httpx.post(f"{url}/v1/audio/speech", json=body, headers=wrong, timeout=60), 401)
    right = {"Authorization": "Bearer sk-test-123"}
    assert httpx.post(f"{url}/v1/audio/speech", json=body, headers=right, timeout=120).status_code == 200
    for path in ("/v1/models", "/v1/audio/models", "/v1/audio/voices", "/health"):
        assert httpx.get(f"{url}{path}").status_code == 200, path  # Open WebUI lists without a key
    upload = httpx.post(f"{url}/v1/audio/voices", data={"name": "x", "consent": "yes"},
                        files={"audio_sample": ("x.wav", b"RIFF", "audio/wav")})
    assert_error(upload, 401)


# ------------------------------------------------------------------------------------------------ listing
def test_model_lists(server: Server) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list"
    ids = [m["id"] for m in models["data"]]
    assert ids == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "chatterbox", "chatterbox-english"]  # what is loaded
    assert all(m["object"] == "model" for m in models["data"])
    audio = httpx.get(f"{server.url}/v1/audio/models").json()
    assert [m["id"] for m in audio["models"]] == ids and all("name" in m for m in audio["models"])
    assert httpx.get(f"{server.url}/v1/models/tts-1").json()["id"] == "tts-1"
    assert_error(httpx.get(f"{server.url}/v1/models/nope"), 404)
    assert_error(httpx.get(f"{server.url}/v1/models/chatterbox-turbo"), 404)  # a Chatterbox model not loaded
    refused = speech(server, model="chatterbox-multilingual")
    assert_error(refused, 400)
    assert refused.json()["error"]["code"] == "model_not_found"
    assert "CHATTERBOX_EXTRA_MODELS=multilingual" in refused.json()["error"]["message"]


def test_health_and_metrics(server: Server) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["engine"] == "vllm" and health["device"] == "cpu"
    assert health["variant"] == "english"
    (entry,) = health["models"]
    phases, ready_after = entry.pop("startup_phases_s"), entry.pop("ready_after_s")  # how the start went
    assert entry == {"id": "chatterbox-english", "model": "english", "variant": "english", "display_name": "English",
                     "status": "ready", "engine": "vllm"}  # fmt: skip
    assert list(phases)[:2] == ["load_s3gen_voice_encoder", "t3_engine"] and phases["t3_engine"] > 0
    assert ready_after >= 0
    speech(server, response_format="pcm")
    text = httpx.get(f"{server.url}/metrics").text
    assert "chatterbox_speech_requests_total" in text and "chatterbox_audio_seconds_total" in text
    assert "vllm:" in text  # the engine's own metrics share the registry
    # every metric API_USAGE.md names is served (histograms and counters by their sample names)
    usage = (Path(__file__).resolve().parents[2] / "API_USAGE.md").read_text()
    documented = set(re.findall(r"`(chatterbox_[a-z0-9_]+)", usage))
    assert "chatterbox_s3gen_work_seconds" in documented and len(documented) >= 9
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("chatterbox_")}
    for name in documented:
        assert any(sample == name or sample.startswith(name + "_") for sample in served), name


# ------------------------------------------------------------------------------------------------- voices
def test_voice_upload_list_use_delete(server: Server) -> None:
    url = server.url
    created = httpx.post(f"{url}/v1/audio/voices", data={"name": "My Voice", "consent": "yes"},
                         files={"audio_sample": ("clip.wav", sine_clip(), "audio/wav")}, timeout=60)
    assert created.status_code == 201, created.text
    voice_id = created.json()["id"]
    listed = httpx.get(f"{url}/v1/audio/voices").json()["voices"]
    assert voice_id in [v["id"] for v in listed] and "alloy" in [v["id"] for v in listed]
    assert Path(server.settings.voices_dir, f"{voice_id}.wav").is_file()

    cloned = speech(server, voice=voice_id, response_format="pcm")
    assert cloned.status_code == 200
    assert cloned.content != speech(server, voice="alloy", response_format="pcm").content  # another speaker

    conflict = httpx.post(f"{url}/v1/audio/voices", data={"name": "My Voice", "consent": "yes"},
                          files={"audio_sample": ("clip.wav", sine_clip(), "audio/wav")}, timeout=60)
    assert_error(conflict, 409)
    assert httpx.delete(f"{url}/v1/audio/voices/{voice_id}").json() == {"id": voice_id, "deleted": True}
    assert_error(speech(server, voice=voice_id), 400, "voice")
    assert_error(httpx.delete(f"{url}/v1/audio/voices/{voice_id}"), 404)
    assert_error(httpx.delete(f"{url}/v1/audio/voices/alloy"), 400)


@pytest.mark.parametrize(
    ("data", "files", "status"),
    [
        ({"name": "noise", "consent": "yes"}, {"audio_sample": ("a.wav", b"not audio at all" * 100, "audio/wav")}, 400),
        ({"name": "../evil", "consent": "yes"}, {"audio_sample": ("a.wav", None, "audio/wav")}, 400),
        ({"name": "short", "consent": "yes"}, {"audio_sample": ("a.wav", "short", "audio/wav")}, 400),
        ({"name": "noconsent", "consent": "no"}, {"audio_sample": ("a.wav", None, "audio/wav")}, 400),
        ({"name": "noconsent"}, {"audio_sample": ("a.wav", None, "audio/wav")}, 400),
    ],
)
def test_bad_uploads_are_refused(server: Server, data: dict, files: dict, status: int) -> None:
    name, content, mime = files["audio_sample"]
    if content is None:
        content = sine_clip()
    elif content == "short":
        content = sine_clip(0.3)
    before = sorted(Path(server.settings.voices_dir).glob("*")) if Path(server.settings.voices_dir).exists() else []
    response = httpx.post(f"{server.url}/v1/audio/voices", data=data, files={"audio_sample": (name, content, mime)},
                          timeout=60)
    assert_error(response, status)
    after = sorted(Path(server.settings.voices_dir).glob("*")) if Path(server.settings.voices_dir).exists() else []
    assert after == before


def test_upload_size_limit(english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    small = start_server(make_settings(tmp_path, max_upload_mib=0.05), english_tts)
    try:
        response = httpx.post(f"{small.url}/v1/audio/voices", data={"name": "big", "consent": "yes"},
                              files={"audio_sample": ("big.wav", sine_clip(3.0), "audio/wav")}, timeout=60)
        error = assert_error(response, 413, "audio_sample")
        assert error["code"] == "file_too_large"
        assert error["message"].startswith("audio_sample is larger than 0.05 MiB, the server's upload limit")
    finally:
        stop_server(small)


# -------------------------------------------------------------------------------------------- concurrency
def test_concurrent_requests_all_succeed(server: Server) -> None:
    results: dict[int, httpx.Response] = {}

    def call(i: int) -> None:
        results[i] = speech(server, seed=i, response_format="pcm", input=f"Request number {i}.", timeout=300)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == list(range(6))
    assert all(r.status_code == 200 and len(r.content) > 0 for r in results.values())
    assert len({r.content for r in results.values()}) == 6  # each request got its own audio


# ------------------------------------------------------------------------------------------- OpenAI client
def test_openai_client(server: Server, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="wav")
    samples, rate = soundfile.read(io.BytesIO(audio.content))
    assert rate == 24000 and 0.5 < len(samples) / rate <= PIECE_SECONDS

    out = tmp_path / "streamed.mp3"
    with client.audio.speech.with_streaming_response.create(model="tts-1-hd", voice="nova", input=SENTENCE) as r:
        r.stream_to_file(out)
    samples, rate = decode(out.read_bytes(), "mp3")
    assert rate == 24000 and 0.5 < len(samples) / rate <= PIECE_SECONDS + 0.08

    with pytest.raises(openai.BadRequestError) as excinfo:
        client.audio.speech.create(model="tts-1", voice="nobody", input=SENTENCE)
    assert "alloy" in str(excinfo.value)


def test_english_model_removes_tags_with_a_warning(server: Server) -> None:
    body = {"model": "tts-1", "voice": "alloy", "response_format": "pcm", "seed": 0, "temperature": 0}
    tagged = httpx.post(f"{server.url}/v1/audio/speech", json={**body, "input": "Hello [laugh] world."}, timeout=120)
    plain = httpx.post(f"{server.url}/v1/audio/speech", json={**body, "input": "Hello world."}, timeout=120)
    assert tagged.status_code == plain.status_code == 200
    assert "[laugh]" in tagged.headers["x-chatterbox-warning"] and "x-chatterbox-warning" not in plain.headers
    assert tagged.content == plain.content
    tags_only = httpx.post(f"{server.url}/v1/audio/speech", json={**body, "input": "[sigh] [laugh]"}, timeout=60)
    assert "nothing but paralinguistic tags ([sigh] [laugh])" in assert_error(tags_only, 400, "input")["message"]
    assert_error(httpx.post(f"{server.url}/v1/audio/speech", json={**body, "input": "Hi.", "top_k": 5}, timeout=60),
                 400, "top_k")  # fmt: skip
