"""Faults over real HTTP: one request's engine failure stays that request's, a full queue answers 429 without
losing what it accepted, and a model that fails to load leaves a server that says so.

The engine fault is injected around the real vLLM engine (the failing request still went through it); nothing else
is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.text.chunking import split_for_synthesis
from chatterbox_vllm.tts import ChatterboxTTS

from server_utils import (
    Server,
    assert_error,
    decode,
    make_settings,
    start_server,
    stop_server,
)

FAULT_SEED = 6_666
TWO_SENTENCES = "The first sentence is here. And the second one follows it."


@pytest.fixture
def faulty_engine(english_tts: ChatterboxTTS, monkeypatch: pytest.MonkeyPatch):
    """The engine, failing requests seeded FAULT_SEED after `fail_after` tokens (their vLLM request is aborted
    as it would be on a real failure); other requests decode as usual."""
    engine = english_tts.engine
    real_stream = engine.stream_async
    plan = {"fail_after": 3}

    async def stream_async(text, cond, params: SamplingParams):
        async with contextlib.aclosing(real_stream(text, cond, params)) as tokens:
            count = 0
            async for token in tokens:
                count += 1
                if params.seed == FAULT_SEED and count > plan["fail_after"]:
                    raise RuntimeError("injected engine fault")
                yield token

    monkeypatch.setattr(engine, "stream_async", stream_async)
    return plan


@pytest.fixture(scope="module")
def fault_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory):
    running = start_server(make_settings(tmp_path_factory.mktemp("faults")), english_tts)
    yield running
    stop_server(running)


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response | Exception]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        return await asyncio.gather(*(http.post("/v1/audio/speech", json=b) for b in bodies), return_exceptions=True)


def _body(seed: int, **extra) -> dict:
    return {"model": "tts-1", "input": TWO_SENTENCES, "voice": "alloy", "response_format": "pcm", "seed": seed, **extra}


def test_an_engine_error_fails_only_its_own_request(
    fault_server: Server, faulty_engine: dict, english_tts: ChatterboxTTS
) -> None:
    bodies = [_body(1), _body(FAULT_SEED), _body(2), _body(3)]
    responses = asyncio.run(_post_all(fault_server.url, bodies))
    failed = responses[1]
    error = assert_error(failed, 500)
    assert error["code"] == "synthesis_failed" and "injected" not in error["message"]  # no internals leak out
    after = httpx.post(f"{fault_server.url}/v1/audio/speech", json=_body(4), timeout=120)
    assert after.status_code == 200  # the server and its engine carry on
    # Whole answers (httpx checks the chunked framing ended properly): 40 tokens less the few special ids
    # S3Gen drops, about 1.2-1.3 s of audio.
    for response in (responses[0], *responses[2:], after):
        assert response.status_code == 200
        assert len(decode(response.content, "pcm")[0]) / 24000 > 1.0
    assert english_tts.engine.num_unfinished_requests() == 0
    assert fault_server.app.state.admission.active == 0


def test_an_error_after_audio_was_sent_cuts_the_stream_instead_of_ending_it_cleanly(
    fault_server: Server, faulty_engine: dict
) -> None:
    """Once a 200 and some audio are out, the only honest signal left is an incomplete response: a client must
    not mistake half the audio for all of it."""
    faulty_engine["fail_after"] = 30  # in the first piece, after its first audio left
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{fault_server.url}/v1/audio/speech", json=_body(FAULT_SEED), timeout=120) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                received += chunk
    assert received  # audio had left before the failure
    assert fault_server.app.state.admission.active == 0


def test_an_error_in_an_sse_stream_is_reported_in_band(fault_server: Server, faulty_engine: dict) -> None:
    faulty_engine["fail_after"] = 30
    response = httpx.post(f"{fault_server.url}/v1/audio/speech", json=_body(FAULT_SEED, stream_format="sse"),
                          timeout=120)  # fmt: skip
    assert response.status_code == 200
    events = [line for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert '"type":"error"' in events[-1] and "speech.audio.done" not in response.text


# ---------------------------------------------------------------------------------------------------- overload
def test_a_full_queue_answers_429_and_finishes_what_it_accepted(english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    limit = 3
    busy = start_server(make_settings(tmp_path, max_queue=limit, max_input_chars=100_000), english_tts)
    text = " ".join(f"Sentence number {i} is here to make the input long enough." for i in range(60))
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"}
    try:

        async def scenario() -> tuple[list[bytes], httpx.Response]:
            async with httpx.AsyncClient(base_url=busy.url, timeout=300) as http:
                streaming = asyncio.Event()

                async def accepted() -> bytes:
                    async with http.stream("POST", "/v1/audio/speech", json=body) as response:
                        assert response.status_code == 200
                        parts = []
                        async for chunk in response.aiter_bytes():
                            parts.append(chunk)
                            if busy.app.state.admission.active == limit:
                                streaming.set()
                        return b"".join(parts)

                tasks = [asyncio.create_task(accepted()) for _ in range(limit)]
                await asyncio.wait_for(streaming.wait(), 120)
                refused = await http.post("/v1/audio/speech", json={**body, "input": "One more."})
                return await asyncio.gather(*tasks), refused

        done, refused = asyncio.run(scenario())
        error = assert_error(refused, 429)
        assert error["type"] == "rate_limit_error" and int(refused.headers["retry-after"]) > 0
        pieces = len(split_for_synthesis(text, busy.settings.chunk_chars))
        seconds = [len(b) / 2 / 24000 for b in done]
        assert min(seconds) > pieces * 1.0, (pieces, seconds)  # every accepted one whole: ~1.3 s a piece
        deadline = time.monotonic() + 30
        while busy.app.state.admission.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert busy.app.state.admission.active == 0
    finally:
        stop_server(busy)


# ------------------------------------------------------------------------------------------------ load failure
def test_a_model_that_fails_to_load_is_reported_and_requests_get_503(
    half_written_checkpoint: Path, tmp_path: Path
) -> None:
    broken = half_written_checkpoint
    server = start_server(make_settings(tmp_path, model=str(broken), engine="vllm", device="cpu"), tts=None)
    try:
        deadline = time.monotonic() + 60
        while (health := httpx.get(f"{server.url}/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert health.status_code == 503
        report = health.json()
        assert report["status"] == "error" and "s3gen.safetensors" in report["error"]
        assert "Traceback" not in report["error"]
        speech = httpx.post(f"{server.url}/v1/audio/speech", json=_body(1), timeout=30)
        error = assert_error(speech, 503)
        assert error["code"] == "model_unavailable" and "s3gen.safetensors" in error["message"]
        assert_error(httpx.get(f"{server.url}/v1/audio/voices"), 503)
        assert httpx.get(f"{server.url}/v1/models").status_code == 200  # what needs no model still answers
    finally:
        stop_server(server)
