"""Streamed first audio under concurrency (tiny English checkpoint, CPU): partial vocodes stay on for concurrent
streams over real HTTP, batch across requests on the S3Gen thread, and one whose request went away is skipped."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client import REGISTRY

from chatterbox_vllm.incremental import IncrementalVocoder, PartialJob, vocode_partials
from chatterbox_vllm.server.s3gen_worker import S3GenWorker
from chatterbox_vllm.tts import ChatterboxTTS

from server_utils import (
    Server,
    make_settings,
    start_server,
    stop_server,
)

SENTENCE = "Hello there, this is a test."
CLIENTS = 8  # above the four requests that streamed partials were once limited to


def first_audio_by_source(model: str = "chatterbox-english") -> dict[str, float]:
    """chatterbox_stream_first_audio_total by source (this process's registry: the test server runs in it)."""
    return {
        source: REGISTRY.get_sample_value("chatterbox_stream_first_audio_total", {"model": model, "source": source})
        or 0.0
        for source in ("partial", "piece")
    }


def first_audio_stages() -> dict[str, float]:
    """How many requests' first audio each stage histogram has timed so far."""
    return {stage: REGISTRY.get_sample_value("chatterbox_first_audio_stage_seconds_count", {"stage": stage}) or 0.0
            for stage in ("prepare", "t3", "s3gen")}  # fmt: skip


def partial_batches() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("chatterbox_s3gen_partial_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("chatterbox_s3gen_partial_batch_size_sum") or 0.0
    return count, total


def stream_concurrently(server: Server, clients: int) -> list[bytes]:
    """`clients` streaming pcm requests at once, each read to its end; their bodies."""
    bodies: list[bytes | None] = [None] * clients
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        start.wait()
        with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=600,
                          json={"model": "tts-1", "input": SENTENCE, "voice": "alloy", "response_format": "pcm",
                                "seed": index}) as response:  # fmt: skip
            response.raise_for_status()
            bodies[index] = b"".join(response.iter_bytes())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    assert all(body for body in bodies), "a client got no audio"
    return [body for body in bodies if body is not None]


@pytest.fixture(scope="module")
def partial_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(make_settings(tmp_path_factory.mktemp("partials")), english_tts)
    yield running
    stop_server(running)


def test_concurrent_streams_each_get_first_audio_before_their_last_token(partial_server: Server) -> None:
    # Not a timing: each request's first audio is counted by what made it. "partial" is audio of the first piece
    # vocoded from its tokens so far, before T3 wrote its last one; "piece" would be the whole piece's.
    before = first_audio_by_source()
    batches_before = partial_batches()
    stages_before = first_audio_stages()
    bodies = stream_concurrently(partial_server, CLIENTS)
    after = first_audio_by_source()
    # each request's first audio timed by stage: its preparation, T3 to the first partial's tokens, that partial
    assert {stage: n - stages_before[stage] for stage, n in first_audio_stages().items()} == {
        "prepare": CLIENTS, "t3": CLIENTS, "s3gen": CLIENTS}
    assert after["partial"] - before["partial"] == CLIENTS
    assert after["piece"] - before["piece"] == 0
    _, total = partial_batches()
    assert total - batches_before[1] >= CLIENTS  # every request's partials ran through the worker's batched path
    assert all(len(body) % 2 == 0 for body in bodies)  # whole 16-bit samples


def test_partials_off_beyond_the_setting(english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    running = start_server(make_settings(tmp_path, stream_partials_max_active=0), english_tts)
    try:
        before = first_audio_by_source()
        stream_concurrently(running, 2)
        after = first_audio_by_source()
        assert (after["partial"] - before["partial"], after["piece"] - before["piece"]) == (0, 2)
    finally:
        stop_server(running)


def test_later_partials_follow_the_playback_lead(english_tts: ChatterboxTTS, tmp_path: Path) -> None:
    """With a lead no stream reaches, a lone stream's first piece keeps coming in partials (first audio, then
    later ones); with no lead wanted, only a first partial runs unless the listener has already run dry, which a
    stream on this host may or may not do: so the second server's count is bounded by the first's."""
    counts = []
    for lead_s in (3600.0, 0.0):
        running = start_server(make_settings(tmp_path / str(lead_s), stream_partial_lead_s=lead_s,
                                             max_new_tokens=60), english_tts)  # fmt: skip
        try:
            before = partial_batches()
            stream_concurrently(running, 1)
            counts.append(partial_batches()[0] - before[0])
        finally:
            stop_server(running)
    assert counts[0] >= 2  # the first partial and at least one later one
    assert 1 <= counts[1] <= counts[0]


@pytest.fixture(scope="module")
def jobs(english_tts: ChatterboxTTS) -> list[PartialJob]:
    """First partials of three requests (different seeds and token counts)."""
    out = []
    for seed, count in ((1, 10), (2, 12), (3, 8)):
        tokens = torch.randint(0, 6561, (count,), generator=torch.Generator().manual_seed(seed)).tolist()
        vocoder = IncrementalVocoder(english_tts, english_tts.default_conds, max_tokens=40, seed=seed, first_tokens=8)
        out.append(vocoder.partial_job(tokens))
    return out


def test_partials_waiting_together_leave_as_one_batch_and_cancelled_ones_are_skipped(
    english_tts: ChatterboxTTS, jobs: list[PartialJob]
) -> None:
    worker = S3GenWorker(english_tts, max_batch=8)
    try:
        gate = threading.Event()
        worker.call(gate.wait, 30)  # holds the thread while the partials queue up behind it
        before = partial_batches()
        futures = [worker.partial(job) for job in jobs]
        dropped = worker.partial(jobs[0])
        assert dropped.cancel()  # its client hung up while it waited: the worker must not run it
        gate.set()
        results = [f.result(timeout=300) for f in futures]
        count, total = partial_batches()
        assert (count - before[0], total - before[1]) == (1, len(jobs))  # one batch, the cancelled one left out
        assert dropped.cancelled()
        for job, got in zip(jobs, results, strict=True):  # each request got its own partial's audio
            alone = vocode_partials(english_tts, [job])[0]
            assert got.wav.shape == alone.wav.shape
            scale = float((alone.wav**2).mean() ** 0.5)
            assert float(abs(got.wav - alone.wav).max()) < 1e-3 * scale
    finally:
        worker.shutdown()


def test_a_bad_partial_fails_alone(english_tts: ChatterboxTTS, jobs: list[PartialJob]) -> None:
    """A partial whose voice S3Gen rejects fails its own request; the others of its batch get their audio."""
    broken = dataclasses.replace(jobs[1], voice={**jobs[1].voice, "embedding": torch.zeros(7)})  # not a 192-dim x-vector
    worker = S3GenWorker(english_tts, max_batch=8)
    try:
        gate = threading.Event()
        worker.call(gate.wait, 30)  # the three queue up and leave as one batch, which fails, then one by one
        good, bad, also_good = worker.partial(jobs[0]), worker.partial(broken), worker.partial(jobs[2])
        gate.set()
        with pytest.raises(RuntimeError):
            bad.result(timeout=300)
        for job, future in ((jobs[0], good), (jobs[2], also_good)):
            alone = vocode_partials(english_tts, [job])[0]
            assert future.result(timeout=300).wav.shape == alone.wav.shape
        assert worker.call(lambda: 42).result(timeout=30) == 42  # still serving
    finally:
        worker.shutdown()
