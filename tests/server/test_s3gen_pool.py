"""Several S3Gen worker processes behind one pool (CHATTERBOX_S3GEN_DEVICES, CHATTERBOX_S3GEN_WORKERS_PER_DEVICE), as
real processes on the CPU with the tiny English checkpoint.

First `S3GenPool` alone over two workers: the same audio as in-process whichever worker vocodes, a piece goes to
the worker with the fewest outstanding, and a restarting worker is passed over. Then over real HTTP, one vLLM
engine shared by a thread-layout server (one worker) and a two-worker server: concurrent requests speak as the
single worker does, /health lists each worker and /metrics each device; a worker SIGKILLed under load is restarted,
its pieces redone, and no request fails.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from chatterbox_vllm.incremental import IncrementalVocoder, vocode_partials
from chatterbox_vllm.server.s3gen_pool import S3GenPool
from chatterbox_vllm.server.s3gen_process import S3GenProcess, WarmUp
from chatterbox_vllm.server.s3gen_worker import S3GenWorker
from chatterbox_vllm.tts import ChatterboxTTS
from chatterbox_vllm.vocoder import S3GenOptions, Vocoder, VocoderSpec, VocodeJob

from server_utils import Server, decode, make_settings, start_server, stop_server
from test_s3gen_process import alive, relative_distance, wait_until

SENTENCES = "Hello there, this is the first sentence. And here comes a second one, a little longer than the first."


@pytest.fixture(scope="module")
def vocoder(english_tiny_checkpoint: Path) -> Vocoder:
    return Vocoder.load(VocoderSpec(str(english_tiny_checkpoint), "cpu", S3GenOptions()))


@pytest.fixture
def pool(english_tiny_checkpoint: Path, vocoder: Vocoder) -> Iterator[S3GenPool]:
    spec = VocoderSpec(str(english_tiny_checkpoint), "cpu", S3GenOptions())
    calls = S3GenWorker(vocoder, 1)
    workers = [S3GenProcess(spec, 8, warm_up=WarmUp(40), call_worker=calls, model="pool") for _ in range(2)]
    started = S3GenPool(workers, calls)
    started.ready.result(timeout=300)
    yield started
    for worker in workers:  # a test may leave one stopped
        if alive(worker.pid):
            os.kill(worker.pid, signal.SIGCONT)
    started.shutdown()
    assert not any(alive(worker.pid) for worker in workers)


def jobs(vocoder: Vocoder, count: int, tokens: int = 40) -> list[VocodeJob]:
    return [VocodeJob(list(range(100 + i, 100 + i + tokens)), vocoder.default_conds, seed=i) for i in range(count)]


def test_every_worker_vocodes_as_in_process(pool: S3GenPool, vocoder: Vocoder) -> None:
    pieces = jobs(vocoder, 6)
    streams = [IncrementalVocoder(vocoder, vocoder.default_conds, max_tokens=40, seed=s) for s in (7, 8)]
    partials = [stream.partial_job(list(range(300, 312))) for stream in streams]
    futures = [pool.vocode(job) for job in pieces]
    partial_futures = [pool.partial(job) for job in partials]
    for job, future in zip(pieces, futures):
        assert relative_distance(future.result(timeout=300), vocoder.vocode(job.tokens, job.conds, seed=job.seed)) < 1e-3
    for job, future in zip(partials, partial_futures):
        assert relative_distance(future.result(timeout=300).wav, vocode_partials(vocoder, [job])[0].wav) < 1e-3
    health = pool.health()
    assert health["layout"] == "process" and health["alive"] and health["restarts"] == 0
    assert [w["device"] for w in health["workers"]] == ["cpu", "cpu"]
    assert len({w["pid"] for w in health["workers"]}) == 2 and all(w["outstanding"] == 0 for w in health["workers"])
    assert pool.call(lambda: torch.is_inference_mode_enabled()).result(timeout=60)  # voice analysis: this process


def test_pieces_go_to_the_least_loaded_worker(pool: S3GenPool, vocoder: Vocoder) -> None:
    first, second = pool.workers
    os.kill(first.pid, signal.SIGSTOP)  # its pieces stay outstanding until it runs again
    try:
        both = [pool.vocode(job) for job in jobs(vocoder, 2)]  # both idle: one piece each
        assert first.outstanding == 1
        wait_until(lambda: second.outstanding == 0)
        for job in jobs(vocoder, 4):  # one at a time: each to the worker with nothing outstanding (else it would hang)
            assert len(pool.vocode(job).result(timeout=120)) > 0
            assert first.outstanding == 1
    finally:
        os.kill(first.pid, signal.SIGCONT)
    for future in both:
        assert len(future.result(timeout=300)) > 0
    assert first.outstanding == second.outstanding == 0


def test_a_restarting_worker_is_passed_over(pool: S3GenPool, vocoder: Vocoder) -> None:
    first, second = pool.workers
    old = first.pid
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not first.accepting)
    futures = [pool.vocode(job) for job in jobs(vocoder, 4)]
    assert first.outstanding == 0  # nothing queues behind the restart while the other worker serves
    for job, future in zip(jobs(vocoder, 4), futures):
        assert relative_distance(future.result(timeout=300), vocoder.vocode(job.tokens, job.conds, seed=job.seed)) < 1e-3
    wait_until(lambda: first.accepting, timeout_s=300)
    assert first.restarts == 1 and first.pid != old and pool.health()["restarts"] == 1


# ------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def servers(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """The same model served with one S3Gen worker (the thread layout) and with two worker processes on the CPU."""
    # SENTENCES are two pieces. A stream's first audio comes from one partial vocode and the rest from whole pieces
    # at any concurrency (later partials run only while few requests are in progress: the audio would depend on
    # timing, not on the worker)
    common = {"chunk_chars": 60, "stream_later_partials_max_active": 0}
    single = start_server(make_settings(tmp_path_factory.mktemp("single"), **common), english_tts)
    pooled = start_server(make_settings(tmp_path_factory.mktemp("pooled"), s3gen_devices="cpu",
                                        s3gen_workers_per_device=2, **common), english_tts)  # fmt: skip
    wait_until(lambda: httpx.get(f"{pooled.url}/health").status_code == 200, timeout_s=300, step_s=0.2)
    yield single, pooled
    stop_server(pooled)
    stop_server(single)


def speech(server: Server, seed: int) -> np.ndarray:
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=600, json={
        "model": "tts-1", "input": SENTENCES, "voice": "alloy", "response_format": "pcm", "seed": seed,
    }) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        return decode(b"".join(response.iter_bytes()), "pcm")[0]


def concurrently(server: Server, seeds: list[int]) -> list[np.ndarray]:
    results: list[np.ndarray | None] = [None] * len(seeds)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(seeds))

    def client(index: int) -> None:
        barrier.wait()
        try:
            results[index] = speech(server, seeds[index])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(seeds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    return [result for result in results if result is not None]


def workers(server: Server) -> list[dict]:
    return httpx.get(f"{server.url}/health").json()["models"][0]["s3gen"]["workers"]


def test_two_workers_speak_as_one(servers: tuple[Server, Server]) -> None:
    single, pooled = servers
    seeds = [20, 21, 22, 23]
    want = [speech(single, seed) for seed in seeds]
    before = REGISTRY.get_sample_value("chatterbox_s3gen_device_work_seconds_count", {"device": "cpu"}) or 0.0
    for got, expected in zip(concurrently(pooled, seeds), want, strict=True):
        assert relative_distance(got, expected) < 5e-3
    entry = httpx.get(f"{pooled.url}/health").json()["models"][0]["s3gen"]
    assert entry["layout"] == "process" and entry["alive"] and "pid" not in entry
    assert [w["device"] for w in entry["workers"]] == ["cpu", "cpu"]
    assert all(w["alive"] and w["outstanding"] == 0 and alive(w["pid"]) for w in entry["workers"])
    metrics = httpx.get(f"{pooled.url}/metrics").text
    assert 'chatterbox_s3gen_device_batch_size_count{device="cpu",kind="vocode"}' in metrics
    assert 'chatterbox_s3gen_worker_restarts_total{device="cpu",model="chatterbox-english"}' in metrics
    assert REGISTRY.get_sample_value("chatterbox_s3gen_device_work_seconds_count", {"device": "cpu"}) > before
    assert "s3gen" not in httpx.get(f"{single.url}/health").json()["models"][0]  # one worker: as before


def test_a_worker_killed_under_load_is_restarted_and_no_request_fails(servers: tuple[Server, Server]) -> None:
    single, pooled = servers
    seeds = list(range(30, 36))
    want = [speech(single, seed) for seed in seeds]
    pool = pooled.app.state.model.require_ready().synthesizer._s3gen
    assert isinstance(pool, S3GenPool)
    victim = pool.workers[0]
    labels = {"model": "chatterbox-english", "device": "cpu"}
    restarts_before = REGISTRY.get_sample_value("chatterbox_s3gen_worker_restarts_total", labels) or 0.0
    old_pid = victim.pid
    results: list[list[np.ndarray]] = []
    load = threading.Thread(target=lambda: results.append(concurrently(pooled, seeds)))
    load.start()
    wait_until(lambda: victim.outstanding > 0)  # pieces of the requests are in its child
    os.kill(old_pid, signal.SIGKILL)
    load.join(600)
    (got,) = results  # every request succeeded
    for audio, expected in zip(got, want, strict=True):
        assert relative_distance(audio, expected) < 5e-3
    listed = workers(pooled)
    assert sum(w["restarts"] for w in listed) == 1 and listed[0]["pid"] != old_pid and listed[0]["alive"]
    assert not alive(old_pid)
    assert httpx.get(f"{pooled.url}/health").json()["models"][0]["s3gen"]["restarts"] == 1
    assert REGISTRY.get_sample_value("chatterbox_s3gen_worker_restarts_total", labels) == restarts_before + 1
    metrics = httpx.get(f"{pooled.url}/metrics").text
    assert f'chatterbox_s3gen_worker_restarts_total{{device="cpu",model="chatterbox-english"}} {restarts_before + 1}' in metrics
