"""S3Gen batching across requests (tiny English checkpoint, CPU): same audio as one at a time, real batches
when pieces wait together, and one bad piece failing only itself."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from prometheus_client import REGISTRY

from chatterbox_vllm.tts import ChatterboxTTS, VocodeJob
from chatterbox_vllm.server.s3gen_worker import S3GenWorker, padded_tokens


@pytest.fixture(scope="module")
def tts(english_tiny_checkpoint: Path) -> ChatterboxTTS:
    return ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")


@pytest.fixture(scope="module")
def jobs(tts: ChatterboxTTS) -> list[VocodeJob]:
    """Pieces of different lengths in two voices whose reference prompts differ in length, seeded and not."""
    t = np.arange(int(3.3 * 24000)) / 24000
    clip = io.BytesIO()
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 24000,
             format="WAV")  # fmt: skip
    other = tts.prepare_conditionals(clip.getvalue())
    assert other.gen["prompt_token"].shape[-1] != tts.default_conds.gen["prompt_token"].shape[-1]
    g = torch.Generator().manual_seed(11)

    def tokens(n: int) -> list[int]:
        return torch.randint(0, 6561, (n,), generator=g).tolist()

    return [
        VocodeJob(tokens(31), tts.default_conds, seed=1),
        VocodeJob(tokens(12) + [6562], other, seed=2),
        VocodeJob(tokens(47), other, seed=3),
        VocodeJob(tokens(20), tts.default_conds, seed=4),
    ]


def batches_seen() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("chatterbox_s3gen_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("chatterbox_s3gen_batch_size_sum") or 0.0
    return count, total


def test_a_batch_gives_each_piece_its_own_audio(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    batched = tts.vocode_batch(jobs)
    for job, wav in zip(jobs, batched, strict=True):
        alone = tts.vocode(job.tokens, job.conds, seed=job.seed)
        assert wav.dtype == np.float32 and wav.shape == alone.shape
        np.testing.assert_allclose(wav, alone, atol=2e-4, rtol=0)
        assert np.abs(alone).max() > 1e-3  # real audio, not silence matching silence


def work_seen() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("chatterbox_s3gen_work_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("chatterbox_s3gen_work_seconds_sum") or 0.0
    return count, total


def test_pieces_waiting_together_leave_as_one_batch(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    worker = S3GenWorker(tts, max_batch=8)
    try:
        gate = threading.Event()
        before_work = work_seen()
        busy = worker.call(gate.wait, 30)  # holds the thread while the pieces queue up behind it
        before = batches_seen()
        futures = [worker.vocode(job) for job in jobs]
        threading.Event().wait(0.3)
        gate.set()
        assert busy.result(timeout=30) is True
        wavs = [f.result(timeout=120) for f in futures]
        count, total = batches_seen()
        assert (count - before[0], total - before[1]) == (1, len(jobs))  # one batch holding every piece
        # the thread's work is timed: the held call (>= 0.3 s) and the batch, two items (observed as each returns:
        # the thread is stopped first)
        worker.shutdown()
        work_count, work_total = work_seen()
        assert work_count - before_work[0] == 2 and work_total - before_work[1] >= 0.3
        for job, wav in zip(jobs, wavs, strict=True):
            np.testing.assert_allclose(wav, tts.vocode(job.tokens, job.conds, seed=job.seed), atol=2e-4, rtol=0)
    finally:
        worker.shutdown()


def test_max_batch_bounds_a_batch(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    worker = S3GenWorker(tts, max_batch=3)
    try:
        gate = threading.Event()
        worker.call(gate.wait, 30)
        before = batches_seen()
        futures = [worker.vocode(job) for job in jobs]
        gate.set()
        for f in futures:
            f.result(timeout=120)
        count, total = batches_seen()
        assert (count - before[0], total - before[1]) == (2, len(jobs))  # 3 + 1
    finally:
        worker.shutdown()


def test_the_padded_token_budget_splits_batches(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    widths = [padded_tokens(job) for job in jobs]
    assert widths == [len(job.tokens) + job.conds.gen["prompt_token"].shape[-1] for job in jobs]
    # room for the first two pieces side by side, not for a third row of the widest of the first three
    budget = 2 * max(widths[:2])
    assert 3 * max(widths[:3]) > budget
    worker = S3GenWorker(tts, max_batch=8, max_batch_tokens=budget)
    try:
        gate = threading.Event()
        worker.call(gate.wait, 30)
        before = batches_seen()
        futures = [worker.vocode(job) for job in jobs]
        gate.set()
        wavs = [f.result(timeout=120) for f in futures]
        count, total = batches_seen()
        assert total - before[1] == len(jobs) and count - before[0] >= 2  # split, nothing lost
        for job, wav in zip(jobs, wavs, strict=True):  # and each piece still got its own audio, in order
            np.testing.assert_allclose(wav, tts.vocode(job.tokens, job.conds, seed=job.seed), atol=2e-4, rtol=0)
    finally:
        worker.shutdown()


def test_a_bad_piece_fails_alone_and_cancelled_ones_are_skipped(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    # not a 192-dim x-vector: S3Gen raises
    broken = dataclasses.replace(tts.default_conds, gen={**tts.default_conds.gen, "embedding": torch.zeros(7)})
    worker = S3GenWorker(tts, max_batch=8)
    try:
        gate = threading.Event()
        worker.call(gate.wait, 30)
        good = worker.vocode(jobs[0])
        bad = worker.vocode(VocodeJob(jobs[3].tokens, broken, seed=5))
        dropped = worker.vocode(jobs[2])
        assert dropped.cancel()  # its request went away while it waited
        also_good = worker.vocode(jobs[1])
        gate.set()
        with pytest.raises(RuntimeError):
            bad.result(timeout=120)
        assert len(good.result(timeout=120)) and len(also_good.result(timeout=120))
        assert dropped.cancelled()
        # the worker is still alive after the failure
        assert worker.call(lambda: 42).result(timeout=30) == 42
    finally:
        worker.shutdown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams: runs on the GPU machine")
def test_gpu_work_queued_by_the_worker_does_not_stall_other_threads_copies(english_tiny_checkpoint: Path) -> None:
    """A new request's prompt embeddings are copied to the host on the event loop while S3Gen's kernels are queued:
    on one shared stream that copy would wait for all of them."""
    cuda_tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cuda", engine="torch")
    worker = S3GenWorker(cuda_tts, max_batch=8)
    try:
        assert worker.call(lambda: torch.cuda.current_stream() != torch.cuda.default_stream()).result(timeout=30)
        (torch.arange(16, device="cuda") * 2).cpu()  # this thread's allocation cached (a cudaMalloc would wait)
        worker.call(torch.cuda._sleep, 2_000_000_000).result(timeout=30)  # ~1 s of GPU cycles, queued, not finished
        start = time.perf_counter()
        (torch.arange(16, device="cuda") * 2).cpu()  # what prompt_embeds does on the event loop's thread
        copy_s = time.perf_counter() - start
        worker.call(lambda: torch.cuda.current_stream().synchronize()).result(timeout=30)  # the worker's stream
        slept_s = time.perf_counter() - start
        assert slept_s > 0.3  # the GPU really was busy that long
        assert copy_s < slept_s / 3
    finally:
        worker.shutdown()
        cuda_tts.close()
