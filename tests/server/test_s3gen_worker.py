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

from chatterbox_vllm.models.s3gen.flow import FlowRow
from chatterbox_vllm.tts import ChatterboxTTS, VocodeJob
from chatterbox_vllm.server.s3gen_worker import (
    INTERACTIVE_QUIET_S,
    MAX_BATCH_TOKENS,
    S3GenWorker,
    cap_low_rows,
    default_batch_tokens,
    padded_tokens,
    select_batch,
)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA: runs on the GPU machine")
def test_gpu_unseeded_pieces_vocode_while_a_graph_is_captured_on_another_thread(english_tiny_checkpoint: Path) -> None:
    """S3Gen's capturer thread records CUDA graphs beside requests; a capture holds torch's default CUDA generator
    for its whole length, so an unseeded piece drawing from it meanwhile failed ("Offset increment outside graph
    capture", an H200 2026-12-03). Unseeded pieces, alone and batched, now vocode while a capture is open."""
    cuda_tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cuda", engine="torch")
    capturing, release, failed = threading.Event(), threading.Event(), []

    def capture() -> None:
        graph, stream, x = torch.cuda.CUDAGraph(), torch.cuda.Stream(), torch.zeros(8, device="cuda")
        try:
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                x.mul_(2)
                capturing.set()
                release.wait(60)
        except Exception as exc:  # noqa: BLE001 - reported below
            failed.append(exc)
            capturing.set()

    thread = threading.Thread(target=capture)
    thread.start()
    try:
        assert capturing.wait(60) and not failed
        tokens = torch.randint(0, 6561, (40,), generator=torch.Generator().manual_seed(3)).tolist()
        alone = cuda_tts.vocoder.vocode(tokens, cuda_tts.default_conds)
        batch = cuda_tts.vocoder.vocode_batch([VocodeJob(tokens, cuda_tts.default_conds),
                                               VocodeJob(tokens[:17], cuda_tts.default_conds)])  # fmt: skip
    finally:
        release.set()
        thread.join(60)
        cuda_tts.close()
    assert not failed, failed
    for wav in [alone, *batch]:
        assert wav.size > 0 and np.isfinite(wav).all()
    assert len(batch[1]) < len(batch[0])


# ------------------------------------------------------------------------------------- batch selection (buckets)
def test_few_waiting_pieces_all_leave_together() -> None:
    assert select_batch([200, 300, 180], [False] * 3, max_rows=8, max_tokens=4096) == [0, 1, 2]
    assert select_batch([], [], max_rows=8, max_tokens=4096) == []


def test_many_waiting_pieces_group_by_length_and_the_oldest_always_goes() -> None:
    # short and long pieces alternate; room for 3 rows: the oldest (short) goes with the other short ones
    lengths = [200, 900, 210, 880, 190, 905]
    assert select_batch(lengths, [False] * 6, max_rows=3, max_tokens=100_000) == [0, 2, 4]
    # the oldest is long: the other long ones join it (no widening), not the short ones that arrived earlier
    assert select_batch(lengths[1:], [False] * 5, max_rows=3, max_tokens=100_000) == [0, 2, 4]
    # padding: the chosen batch's rows x width against taking the first three in arrival order
    assert 3 * max(lengths[i] for i in (0, 2, 4)) < 3 * max(lengths[:3])
    # one piece wider than the whole budget still goes (alone), as before
    assert select_batch([5000, 100], [False, False], max_rows=8, max_tokens=4096) == [0]


def test_a_passed_over_piece_goes_before_any_newer_one() -> None:
    lengths = [200, 900, 210, 880, 190]
    passed = [False, True, False, True, False]  # 1 and 3 were overtaken last time
    # the oldest, then every passed-over piece, then newer ones by length while rows remain
    assert select_batch(lengths, passed, max_rows=3, max_tokens=100_000) == [0, 1, 3]
    # passed-over pieces that do not all fit leave no room for newer ones
    assert select_batch([200, 900, 880, 190], [False, True, True, False], max_rows=8, max_tokens=2000) == [0, 1]


def test_job_pieces_batch_only_after_every_waiting_interactive_piece() -> None:
    """Low-priority pieces (long-form jobs') fill rows left after the interactive pieces; the oldest interactive piece
    goes even when a job's piece is older, and the interactive pieces' own order rules hold as without jobs."""
    lengths = [200, 210, 900, 205, 220]
    low = [True, False, True, False, True]
    # interactive 1 and 3 go first, then job pieces of a similar length fill the rows left; the long one waits
    assert select_batch(lengths, [False] * 5, max_rows=4, max_tokens=100_000, low=low) == [0, 1, 3, 4]
    # no room after the interactive pieces: no job piece goes, however old
    assert select_batch(lengths, [False] * 5, max_rows=2, max_tokens=100_000, low=low) == [1, 3]
    # an interactive piece left over (budget) keeps every job piece out of this batch
    assert select_batch([200, 800, 900, 200], [False] * 4, max_rows=8, max_tokens=1700,
                        low=[True, False, False, True]) == [1]  # fmt: skip
    # the interactive tier alone is chosen exactly as without job pieces
    interactive = [250, 900, 240, 260]
    assert select_batch(interactive + [100, 100], [False, True, False, False, False, False], max_rows=3,
                        max_tokens=100_000, low=[False] * 4 + [True] * 2) == select_batch(
        interactive, [False, True, False, False], max_rows=3, max_tokens=100_000)  # fmt: skip
    # only job pieces waiting: the usual rules among them
    assert select_batch([200, 300, 180], [False] * 3, max_rows=8, max_tokens=4096, low=[True] * 3) == [0, 1, 2]


def test_job_rows_are_capped_and_interactive_pieces_never_dropped() -> None:
    low = [True, False, True, True, False, True]
    assert cap_low_rows([0, 1, 2, 3, 4, 5], low, 1) == [0, 1, 4]  # the oldest job piece, every interactive one
    assert cap_low_rows([1, 2, 3, 4], low, 2) == [1, 2, 3, 4]
    assert cap_low_rows([0, 2, 3], low, 2) == [0, 2]


def test_job_pieces_go_a_few_at_a_time_while_requests_come(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    """With interactive work just seen, a batch takes at most `low_rows_beside` job pieces (a running batch cannot be
    interrupted: the next request's audio waits for it); once requests have stopped for INTERACTIVE_QUIET_S, job
    pieces fill whole batches again. Each piece keeps its own audio either way."""
    worker = S3GenWorker(tts, max_batch=8, low_rows_beside=1)
    try:
        gate = threading.Event()
        worker.call(gate.wait, 30)
        before = batches_seen()
        interactive = worker.vocode(jobs[0])
        low = [worker.vocode(job, low_priority=True) for job in jobs[1:]]
        gate.set()
        wavs = [f.result(timeout=120) for f in [interactive, *low]]
        count, total = batches_seen()
        # the interactive piece with one job piece, then the other two job pieces one at a time
        assert (count - before[0], total - before[1]) == (3, len(jobs))
        for job, wav in zip(jobs, wavs, strict=True):
            np.testing.assert_allclose(wav, tts.vocode(job.tokens, job.conds, seed=job.seed), atol=2e-4, rtol=0)
        time.sleep(INTERACTIVE_QUIET_S + 0.2)  # requests stopped: jobs' pieces batch together again
        worker.call(gate.clear)
        worker.call(gate.wait, 30)
        before = batches_seen()
        low = [worker.vocode(job, low_priority=True) for job in jobs]
        gate.set()
        for f in low:
            f.result(timeout=120)
        count, total = batches_seen()
        assert (count - before[0], total - before[1]) == (1, len(jobs))
    finally:
        worker.shutdown()


def test_the_token_budget_bounds_a_selected_batch() -> None:
    lengths = [250, 240, 260, 230, 250]
    chosen = select_batch(lengths, [False] * 5, max_rows=8, max_tokens=3 * 260)
    assert len(chosen) == 3 and 0 in chosen
    assert len(chosen) * max(lengths[i] for i in chosen) <= 3 * 260


def test_larger_batches_get_a_larger_token_budget() -> None:
    assert default_batch_tokens(2) == default_batch_tokens(16) == MAX_BATCH_TOKENS  # low and medium as before
    assert default_batch_tokens(64) >= 64 * 231  # 64 sentences of 75 tokens after the built-in 156-token prompt


def test_no_piece_is_overtaken_twice_in_the_worker(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    """Pieces queued while the thread is busy leave in batches of similar lengths, every one with its own audio,
    and a piece overtaken once leaves in the next batch."""
    short, long_ = jobs[1], jobs[2]  # 13 and 47 tokens after prompts of the same voice
    order = [short, long_, short, long_, short, long_, long_]
    worker = S3GenWorker(tts, max_batch=3)
    assert worker.max_batch_tokens == MAX_BATCH_TOKENS
    done: list[int] = []
    try:
        gate = threading.Event()
        worker.call(gate.wait, 30)
        before = batches_seen()
        futures = [worker.vocode(job) for job in order]
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _f, i=i: done.append(i))
        gate.set()
        wavs = [f.result(timeout=120) for f in futures]
        count, total = batches_seen()
        assert (count - before[0], total - before[1]) == (3, len(order))
        # batches: the shorts (0, 2, 4); then the overtaken longs 1, 3 and the next long 5; then 6
        assert [sorted(done[:3]), sorted(done[3:6]), done[6:]] == [[0, 2, 4], [1, 3, 5], [6]]
        for job, wav in zip(order, wavs, strict=True):
            np.testing.assert_allclose(wav, tts.vocode(job.tokens, job.conds, seed=job.seed), atol=2e-4, rtol=0)
    finally:
        worker.shutdown()


def test_a_voice_is_prepared_once_and_means_the_same(tts: ChatterboxTTS, jobs: list[VocodeJob]) -> None:
    """The flow's per-voice work (prompt tokens, prompt mel, speaker projection) is made once per voice; a batch
    given it equals one that makes it from the prompt."""
    builtin, other = tts.flow_voice(jobs[0].conds), tts.flow_voice(jobs[1].conds)
    assert tts.flow_voice(jobs[3].conds) is builtin and other is not builtin
    flow = tts.s3gen.flow
    gen = jobs[1].conds.gen
    with torch.inference_mode():
        spks = flow.spk_embed_affine_layer(torch.nn.functional.normalize(gen["embedding"].reshape(1, -1), dim=1))[0]
    torch.testing.assert_close(other.spks, spks)
    assert torch.equal(other.prompt_tokens, gen["prompt_token"].reshape(-1).cpu())
    assert torch.equal(other.prompt_cond, gen["prompt_feat"].reshape(-1, 80).T)
    g = torch.Generator().manual_seed(5)
    speech = torch.randint(0, 6561, (9,), generator=g)
    noise = torch.randn(80, 2 * (other.prompt_tokens.numel() + 9), generator=g)
    row = FlowRow(speech, gen["prompt_token"], gen["prompt_feat"], gen["embedding"], noise)
    with torch.inference_mode():
        [made] = flow.inference_rows([row], n_timesteps=2)
        [given] = flow.inference_rows([dataclasses.replace(row, voice=other)], n_timesteps=2)
    assert torch.equal(made, given) and made.abs().max() > 0


def test_a_job_batch_waits_between_flow_steps_while_a_request_is_in_progress(
    tts: ChatterboxTTS, jobs: list[VocodeJob]
) -> None:
    """While the server has a speech request in progress, a batch of job pieces stops between two flow steps; the
    request's pieces and partials that arrive run there, before the job's batch ends; the job goes on once no
    request is in progress, with the audio it has alone."""
    from chatterbox_vllm.incremental import IncrementalVocoder, vocode_partials

    worker = S3GenWorker(tts, max_batch=8, max_pause_s=120)
    try:
        started = time.perf_counter()
        worker.vocode(jobs[2], low_priority=True).result(timeout=120)
        alone_s = time.perf_counter() - started
        worker.note_requests(1)
        job = worker.vocode(jobs[2], low_priority=True)
        time.sleep(max(1.0, 3 * alone_s))
        assert not job.done()  # paused, not finished: three times its time alone has passed
        partial_job = IncrementalVocoder(tts, tts.default_conds, max_tokens=40, seed=5).partial_job(list(range(300, 312)))
        partial = worker.partial(partial_job)
        piece = worker.vocode(jobs[0])
        wav = piece.result(timeout=120)
        assert partial.result(timeout=120).wav.size > 0
        assert not job.done()  # the request's work ran between the job's steps
        worker.note_requests(0)
        job_wav = job.result(timeout=120)
        np.testing.assert_allclose(wav, tts.vocode(jobs[0].tokens, jobs[0].conds, seed=jobs[0].seed), atol=2e-4, rtol=0)
        np.testing.assert_allclose(job_wav, tts.vocode(jobs[2].tokens, jobs[2].conds, seed=jobs[2].seed), atol=2e-4,
                                   rtol=0)  # fmt: skip
        np.testing.assert_allclose(partial.result().wav, vocode_partials(tts, [partial_job])[0].wav, atol=2e-4, rtol=0)
    finally:
        worker.shutdown()


def test_a_job_batch_pauses_at_most_max_pause_and_its_pause_is_not_counted_as_work(
    tts: ChatterboxTTS, jobs: list[VocodeJob]
) -> None:
    """Under constant load a job's batch still ends: it waits `max_pause_s` in all, then runs its remaining steps;
    S3Gen's work metrics count its steps, not its wait."""
    seen: list[tuple[str, float, int]] = []
    worker = S3GenWorker(tts, max_batch=8, max_pause_s=1.5, record=lambda *work: seen.append(work))
    try:
        worker.note_requests(3)
        started = time.perf_counter()
        worker.vocode(jobs[2], low_priority=True).result(timeout=120)
        elapsed = time.perf_counter() - started
    finally:
        worker.shutdown()
    assert elapsed >= 1.5
    (kind, seconds, rows), = seen
    assert (kind, rows) == ("vocode", 1) and seconds <= elapsed - 1.4
