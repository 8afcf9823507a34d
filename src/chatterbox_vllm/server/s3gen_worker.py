"""The one thread that runs S3Gen (and voice-clip analysis) for the server, batching vocodes across requests.

With many requests in flight, S3Gen is the bottleneck when it runs a piece at a time: at batch one its flow
estimator is launch-bound and leaves the GPU mostly idle. So whole-piece vocodes that are waiting together
leave as one padded batch (`ChatterboxTTS.vocode_batch`, up to `max_batch` pieces and `max_batch_tokens` padded
tokens); nothing waits for a batch to fill, so a lone request pays no extra latency. When more pieces wait than
one batch holds, pieces of similar length go together (`select_batch`: a batch costs rows x its longest row), but
a piece passed over once goes, oldest first, before any newer one: none waits behind more than one batch of later
arrivals. Partial vocodes (a streamed piece's audio before its last token, `incremental`) are batched the same way
among themselves, and a batch of them goes before each batch of whole pieces: a stream's next audio waits on them,
and every partial has a bounded shape (voice prompt, a bounded left context, its new tokens), so they stay cheap at
any concurrency. Other work (voice analysis) runs alone, in arrival order, after the batch that leaves next.

A batch that fails is retried job by job, so one bad piece fails only its own request.

Long-form jobs' pieces are low priority: they join a batch only after the interactive pieces waiting, and a batch of
them, while speech requests are recent, runs its flow step by step (`flow_matching.steps_yield_to`): between two
steps the thread runs the requests' partials, pieces and calls that came meanwhile, and while a request is in
progress (`note_requests`, from the server's `Admission`) it waits there, up to `max_pause_s` per batch. Measured on
an H200 before this (BENCHMARKS.md "Long-form jobs"): a request arriving while a job piece was being vocoded
(~150 ms) waited for it, first byte 1.30x idle against the 1.2x asked; now it waits for one flow step at most.

On a GPU the thread queues its kernels on a CUDA stream of its own. On the legacy default stream they would be
waited for by every small synchronising copy other threads make there: T3's prompt embeddings, built on the event
loop for each new request and copied to the host for vLLM, would stall the whole server for as long as the S3Gen
work already queued (up to a batch, ~0.3 s on an H100). PyTorch's side streams do not synchronise with the default
stream, so those copies wait only for their own kernels.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..incremental import PartialJob, PartialResult, VocoderLike, vocode_partials
from ..models.s3gen.flow_matching import steps_yield_to
from ..vocoder import VocodeJob
from .admission import REQUESTS_QUIET_S
from .metrics import S3GEN_BATCH, S3GEN_DEVICE_BATCH, S3GEN_DEVICE_WORK, S3GEN_PARTIAL_BATCH, S3GEN_WORK

log = logging.getLogger(__name__)


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future = field(default_factory=Future)


@dataclass
class _Vocode:
    job: VocodeJob
    future: Future = field(default_factory=Future)
    passed_over: bool = False  # a newer piece left in a batch before this one
    low_priority: bool = False  # a long-form job's piece: batched only after the interactive pieces waiting


@dataclass
class _Partial:
    job: PartialJob
    future: Future = field(default_factory=Future)


_STOP = object()

# A batch's padded size (rows x its longest row, voice prompt included) is bounded too: the flow encoder's
# attention holds rows x heads x (2 x length)^2 scores, so 4096 keeps a batch of the longest pieces (3 rows of
# ~1150 tokens) near 1 GB while typical sentences (~230 tokens with the prompt) still go 8 at a time. Batches of
# more than 16 rows (the high preset's 64) get 256 padded tokens a row: a sentence of 100 tokens after the built-in
# voice's 156-token prompt, so 64 sentences go together and the longest pieces still go ~14 at a time (~4.5 GB).
MAX_BATCH_TOKENS = 4096
TOKENS_PER_ROW = 256


def default_batch_tokens(max_batch: int) -> int:
    """The padded-token budget of a worker of `max_batch` rows: MAX_BATCH_TOKENS up to 16 rows (low and medium
    presets keep it), TOKENS_PER_ROW a row beyond."""
    return max(MAX_BATCH_TOKENS, TOKENS_PER_ROW * max_batch)


def padded_tokens(job: VocodeJob) -> int:
    """The tokens this piece puts through the flow: its voice prompt's and its own."""
    prompt = job.conds.gen.get("prompt_token")
    return len(job.tokens) + (int(prompt.shape[-1]) if prompt is not None else 0)


def select_batch(
    lengths: list[int], passed_over: list[bool], max_rows: int, max_tokens: int, low: list[bool] | None = None
) -> list[int]:
    """Which of the waiting pieces (arrival order; padded tokens `lengths`) leave in the next batch, by index.

    The oldest piece always goes (alone if it exceeds the budget by itself). Then pieces already passed over once,
    oldest first; only if room is left, newer pieces, those that add the least padding first (ties: oldest), as
    long as rows x longest row stays within `max_tokens`. So pieces of similar length share a batch and waste
    little padding (greedily: each next piece is the one adding the fewest padded tokens), while a piece is
    overtaken by newer ones in one batch at most. Returned in arrival order.

    `low` marks low-priority pieces (long-form jobs'): they take part only after every interactive piece waiting
    has a row in this batch (the rules above hold among the interactive pieces, then among the low ones), so the
    oldest piece that always goes is the oldest interactive one, and a job's pieces never delay a request's.
    """
    if not lengths:
        return []
    if low is not None and any(low) and not all(low):
        return _select_in_tiers(lengths, passed_over, max_rows, max_tokens, low)
    return _select_tier(lengths, passed_over, max_rows, max_tokens)


def _select_in_tiers(
    lengths: list[int], passed_over: list[bool], max_rows: int, max_tokens: int, low: list[bool]
) -> list[int]:
    """`select_batch` over the interactive pieces, then, if all of them went and room is left, over the low ones."""
    interactive = [i for i in range(len(lengths)) if not low[i]]
    rest = [i for i in range(len(lengths)) if low[i]]
    firsts = _select_tier([lengths[i] for i in interactive], [passed_over[i] for i in interactive], max_rows,
                          max_tokens)  # fmt: skip
    chosen = [interactive[i] for i in firsts]
    if len(chosen) < len(interactive):
        return chosen
    extra = _select_tier([lengths[i] for i in rest], [passed_over[i] for i in rest], max_rows, max_tokens,
                         taken=[lengths[i] for i in chosen])  # fmt: skip
    return sorted(chosen + [rest[i] for i in extra])


def _select_tier(
    lengths: list[int], passed_over: list[bool], max_rows: int, max_tokens: int, taken: list[int] | None = None
) -> list[int]:
    """`select_batch`'s rules over one tier of pieces; `taken`: the padded lengths of rows already in the batch
    (then the tier's oldest piece goes only if it fits)."""
    if not lengths:
        return []
    if taken:
        chosen, width = [], max(taken)
        rows = len(taken)
        if rows >= max_rows or max(width, lengths[0]) * (rows + 1) > max_tokens:
            return []
        chosen.append(0)
        width = max(width, lengths[0])
    else:
        rows = 0
        chosen, width = [0], lengths[0]

    def fits(i: int) -> bool:
        return rows + len(chosen) < max_rows and max(width, lengths[i]) * (rows + len(chosen) + 1) <= max_tokens

    def padding_added(i: int) -> int:
        """Padded tokens that taking piece i adds: its own padding, or the widening of every row taken so far."""
        return width - lengths[i] if lengths[i] <= width else (lengths[i] - width) * (rows + len(chosen))

    overdue = [i for i in range(1, len(lengths)) if passed_over[i]]
    for i in overdue:
        if not fits(i):
            return sorted(chosen)  # older passed-over pieces go first; no newer piece may overtake them again
        chosen.append(i)
        width = max(width, lengths[i])
    fresh = [i for i in range(1, len(lengths)) if not passed_over[i]]
    while fresh and rows + len(chosen) < max_rows:
        best = min(fresh, key=lambda i: (padding_added(i), i))
        if not fits(best):
            break
        chosen.append(best)
        fresh.remove(best)
        width = max(width, lengths[best])
    return sorted(chosen)


# After an interactive piece or partial, how long the worker keeps long-form jobs' pieces to `low_rows_beside` rows a
# batch: requests come one after another (a stream's pieces and partials, the next request a moment later), and a
# running batch cannot be interrupted, so jobs' batches stay short until requests have stopped coming for a while.
INTERACTIVE_QUIET_S = REQUESTS_QUIET_S


# How often a job's batch paused between flow steps looks whether the requests in progress have ended.
PAUSE_POLL_S = 0.002


def cap_low_rows(chosen: list[int], low: list[bool], max_low: int) -> list[int]:
    """`chosen` (arrival order) keeping at most `max_low` low-priority pieces, the oldest: an interactive piece is
    never dropped."""
    kept, low_kept = [], 0
    for i in chosen:
        if low[i]:
            if low_kept >= max_low:
                continue
            low_kept += 1
        kept.append(i)
    return kept


# Told of each piece of work the thread ran: its kind ("vocode", "partial", "call"), seconds and rows (pieces in a
# batch; 1 for a call). The default records the S3Gen metrics; the S3Gen process's worker reports to its parent.
WorkRecorder = Callable[[str, float, int], None]


def record_work(kind: str, seconds: float, rows: int, device: str | None = None) -> None:
    """S3Gen's metrics for one piece of work: its seconds, and the batch's size for vocodes and partials; by
    `device` too when it is known."""
    S3GEN_WORK.observe(seconds)
    if kind == "vocode":
        S3GEN_BATCH.observe(rows)
    elif kind == "partial":
        S3GEN_PARTIAL_BATCH.observe(rows)
    if device is not None:
        S3GEN_DEVICE_WORK.labels(device=device).observe(seconds)
        if kind in ("vocode", "partial"):
            S3GEN_DEVICE_BATCH.labels(device=device, kind=kind).observe(rows)


class S3GenWorker:
    def __init__(
        self, tts: VocoderLike, max_batch: int, max_batch_tokens: int | None = None, *,
        record: WorkRecorder | None = None, low_rows_beside: int | None = None, max_pause_s: float = 0.0,
    ) -> None:  # fmt: skip
        """`tts`: what vocodes (a ChatterboxTTS, or a `Vocoder` alone in the S3Gen process). `max_batch_tokens`: None
        takes `default_batch_tokens(max_batch)`. `record` hears of each piece of work run (`WorkRecorder`; None:
        `record_work`, by `tts`'s device). `low_rows_beside`: low-priority pieces a batch takes at most while
        interactive work came within INTERACTIVE_QUIET_S (None: as many as fit). `max_pause_s`: how long in all a
        batch of low-priority pieces may pause between its flow steps while speech requests are in progress
        (`note_requests`; CHATTERBOX_JOB_MAX_DEFER_S); 0: it does not pause, only serves waiting work there."""
        self.tts = tts
        self.record = record or functools.partial(record_work, device=str(tts.device))
        self.low_rows_beside = low_rows_beside
        self.max_pause_s = max_pause_s
        self.requests_in_progress = 0  # the server's speech requests in progress (`note_requests`)
        self._last_interactive = -float("inf")  # monotonic time an interactive piece or partial was last taken
        self.max_batch = max(1, max_batch)
        self.max_batch_tokens = max_batch_tokens or default_batch_tokens(self.max_batch)
        tts.set_s3gen_max_rows(self.max_batch)  # S3Gen's CUDA graphs then serve batches this large
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Work taken from the queue and not yet run, in arrival order: whole pieces, partials, other calls.
        self._pending: list[_Vocode] = []
        self._partials: list[_Partial] = []
        self._later: list[_Call] = []
        self._stop_met = False  # a stop taken from the queue: nothing after it is taken
        self._step_events: collections.deque[torch.cuda.Event] = collections.deque()
        self._paused = 0.0  # seconds the job batch under way has waited for requests in progress
        self._yielded_s = 0.0  # seconds spent between job batches' flow steps, in all (not counted as their work)
        # What runs a batch of partials (a benchmark's first-audio trace wraps it to time the S3Gen part).
        self.vocode_partials: Callable[[VocoderLike, list[PartialJob]], list[PartialResult]] = vocode_partials
        self.stream: torch.cuda.Stream | None = None  # the thread's own CUDA stream (set when it starts, on a GPU)
        self._thread = threading.Thread(target=self._run, name="s3gen", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- submit
    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the S3Gen thread (under inference mode)."""
        item = _Call(fn, args)
        self._queue.put(item)
        return item.future

    def vocode(self, job: VocodeJob, *, low_priority: bool = False) -> Future:
        """The waveform of a whole piece (float32, 24 kHz), batched with other pieces waiting at the time.
        `low_priority` (a long-form job's piece): it joins a batch only after the interactive pieces waiting, and
        a batch of such pieces lets interactive work run between its flow steps (see `_yield_to_requests`)."""
        item = _Vocode(job, low_priority=low_priority)
        self._queue.put(item)
        return item.future

    def partial(self, job: PartialJob) -> Future:
        """A partial vocode's result (`incremental.PartialResult`), batched with other requests' partials."""
        item = _Partial(job)
        self._queue.put(item)
        return item.future

    def note_requests(self, in_progress: int) -> None:
        """The server's speech requests in progress now (`Admission.watch`): while any is, a batch of long-form
        job pieces waits between its flow steps, leaving the GPU to the request's T3 steps and S3Gen work."""
        self.requests_in_progress = in_progress

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel the work still queued, let the running batch finish, stop the thread."""
        self._cancel_rest()
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)

    # ---------------------------------------------------------------------------------------------- run
    @contextlib.contextmanager
    def _own_stream(self) -> Iterator[None]:
        """This thread's CUDA work on a stream of its own (nothing to do on a CPU)."""
        device = torch.device(self.tts.device)
        if device.type != "cuda":
            yield
            return
        self.stream = torch.cuda.Stream(device=device)
        with torch.cuda.stream(self.stream):
            yield

    def _run(self) -> None:
        with self._own_stream():
            self._serve()

    def _serve(self) -> None:
        while True:
            if not (self._pending or self._partials or self._later):
                item = self._queue.get()
                if item is _STOP:
                    self._cancel_rest()
                    return
                if isinstance(item, _Call):
                    self._run_call(item)
                    continue
                (self._partials if isinstance(item, _Partial) else self._pending).append(item)
            self._take_waiting()
            self._run_partials_waiting(all_of_them=False)
            batch = self._next_batch(interactive_only=False)
            if batch:
                self._run_batch(batch)
            later, self._later = self._later, []
            for other in later:
                self._run_call(other)
            if self._stop_met:
                unfinished: list[_Vocode | _Partial] = [*self._pending, *self._partials]
                for left in unfinished:
                    left.future.cancel()
                self._cancel_rest()
                return

    def _requests_recent(self) -> bool:
        """Whether interactive work came within INTERACTIVE_QUIET_S, or a speech request is in progress: jobs'
        pieces then go a few at a time, and their batch yields between flow steps."""
        return self.requests_in_progress > 0 or time.monotonic() - self._last_interactive < INTERACTIVE_QUIET_S

    def _take_waiting(self) -> None:
        """Move everything waiting in the queue into the pending lists (calls run after the next batch, in order);
        after a stop nothing more is taken."""
        while not self._stop_met:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._stop_met = True
            elif isinstance(item, _Vocode):
                self._pending.append(item)
            elif isinstance(item, _Partial):
                self._partials.append(item)
            else:
                self._later.append(item)
        if self._partials or any(not piece.low_priority for piece in self._pending):
            self._last_interactive = time.monotonic()

    def _run_partials_waiting(self, *, all_of_them: bool) -> None:
        """The next batch of partials (every batch of them with `all_of_them`); cancelled ones are dropped."""
        while True:
            self._partials = [item for item in self._partials if not item.future.cancelled()]  # requests gone
            if not self._partials:
                return
            batch, self._partials = self._partial_batch(self._partials)
            self._run_partials(batch)
            if not all_of_them:
                return

    def _next_batch(self, *, interactive_only: bool) -> list[_Vocode]:
        """The whole pieces that leave together next (`select_batch`), taken out of the pending list; with
        `interactive_only` only requests' pieces are candidates."""
        self._pending = [piece for piece in self._pending if not piece.future.cancelled()]
        pool = [piece for piece in self._pending if not (interactive_only and piece.low_priority)]
        if not pool:
            return []
        low = [piece.low_priority for piece in pool]
        chosen = select_batch([padded_tokens(piece.job) for piece in pool], [piece.passed_over for piece in pool],
                              self.max_batch, self.max_batch_tokens, low)  # fmt: skip
        if self.low_rows_beside is not None and self._requests_recent():
            chosen = cap_low_rows(chosen, low, self.low_rows_beside)
        taken = set(chosen)
        newest = max(chosen)
        for i, piece in enumerate(pool):
            if i not in taken and i < newest:
                piece.passed_over = True
        batch = [pool[i] for i in chosen]
        leaving = {id(piece) for piece in batch}
        self._pending = [piece for piece in self._pending if id(piece) not in leaving]
        return batch

    # ------------------------------------------------------------------------- jobs yield to requests
    def _yield_to_requests(self) -> None:
        """Between two flow steps of a batch of long-form job pieces: run the requests' work that came meanwhile
        (partials, whole pieces, calls), and while speech requests are in progress wait for them (polling, at most
        `max_pause_s` over the batch), so a request's T3 steps and S3Gen work find the GPU free. A batch of job
        pieces takes ~150 ms of S3Gen on an H200 (one row of ~7 s of audio); a request waits for one step of it."""
        entered = time.perf_counter()
        try:
            self._serve_between_steps()
        finally:
            self._yielded_s += time.perf_counter() - entered

    def _serve_between_steps(self) -> None:
        self._await_previous_step()
        while True:
            self._take_waiting()
            with steps_yield_to(None):  # the requests' flows run whole, on their graphs
                self._run_partials_waiting(all_of_them=True)
                while batch := self._next_batch(interactive_only=True):
                    self._run_batch(batch)
                later, self._later = self._later, []
                for other in later:
                    self._run_call(other)
            if self._stop_met or self.requests_in_progress <= 0 or self._paused >= self.max_pause_s:
                return
            slept = time.monotonic()
            time.sleep(PAUSE_POLL_S)
            self._paused += time.monotonic() - slept

    def _await_previous_step(self) -> None:
        """Keep the GPU at most one flow step ahead of this thread (CUDA: the step before last is waited for), so
        work run here next does not queue behind the batch's remaining steps."""
        if self.stream is None:
            return
        event = torch.cuda.Event()
        event.record(self.stream)
        self._step_events.append(event)
        while len(self._step_events) > 1:
            self._step_events.popleft().synchronize()

    def _cancel_rest(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.future.cancel()

    @contextlib.contextmanager
    def _work(self, kind: str, rows: int) -> Iterator[None]:
        """Time one piece of work for `record` (also when it fails), less the time it yielded to other work."""
        started, yielded = time.perf_counter(), self._yielded_s
        try:
            yield
        finally:
            self.record(kind, time.perf_counter() - started - (self._yielded_s - yielded), rows)

    def _run_call(self, item: _Call) -> None:
        if not item.future.set_running_or_notify_cancel():
            return  # its request was cancelled while it waited
        with self._work("call", 1):
            try:
                with torch.inference_mode():
                    item.future.set_result(item.fn(*item.args))
            except BaseException as exc:  # noqa: BLE001 - delivered to the request that asked
                item.future.set_exception(exc)

    def _run_batch(self, batch: list[_Vocode]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        yielding = all(item.low_priority for item in live) and self._requests_recent()
        with self._work("vocode", len(live)), self._yielding(yielding):
            self._vocode_live(live)

    @contextlib.contextmanager
    def _yielding(self, on: bool) -> Iterator[None]:
        """A batch of job pieces while requests are recent: its flow yields to requests between steps."""
        if not on:
            yield
            return
        self._paused = 0.0
        self._step_events.clear()
        try:
            with steps_yield_to(self._yield_to_requests):
                yield
        finally:
            self._step_events.clear()

    def _vocode_live(self, live: list[_Vocode]) -> None:
        def vocode(jobs: list[VocodeJob]) -> list[np.ndarray]:
            return [np.asarray(wav, dtype=np.float32) for wav in self.tts.vocode_batch(jobs)]

        _deliver_each(live, vocode, "S3Gen batch of %d failed (%s); vocoding its pieces one by one")

    # -------------------------------------------------------------------------------------------- partials
    def _partial_batch(self, partials: list[_Partial]) -> tuple[list[_Partial], list[_Partial]]:
        """The partials that leave together next, in arrival order (up to `max_batch` rows and `max_batch_tokens`
        padded tokens; the oldest always goes), and those left for the batch after."""
        batch, rest = [partials[0]], list[_Partial]()
        width = partials[0].job.padded_tokens
        for item in partials[1:]:
            wider = max(width, item.job.padded_tokens)
            if not rest and len(batch) < self.max_batch and wider * (len(batch) + 1) <= self.max_batch_tokens:
                batch.append(item)
                width = wider
            else:
                rest.append(item)  # arrival order kept: nothing after a partial left over overtakes it
        return batch, rest

    def _run_partials(self, batch: list[_Partial]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return  # every request that asked was cancelled while it waited
        with self._work("partial", len(live)):
            self._partials_live(live)

    def _partials_live(self, live: list[_Partial]) -> None:
        _deliver_each(live, lambda jobs: self.vocode_partials(self.tts, jobs),
                      "S3Gen partial batch of %d failed (%s); running its partials one by one")  # fmt: skip


def _deliver_each(live: Sequence[_Vocode | _Partial], run: Callable[[list[Any]], list[Any]], retry_log: str) -> None:
    """Each item's result from one `run` over all their jobs; if the batch fails, `run` over each item alone, so
    one bad piece fails only its own request (a batch of one fails at once)."""
    try:
        results = run([item.job for item in live])
    except BaseException as exc:  # noqa: BLE001 - delivered to the requests that asked
        if len(live) == 1:
            live[0].future.set_exception(exc)
            return
        log.warning(retry_log, len(live), exc)
        for item in live:
            try:
                item.future.set_result(run([item.job])[0])
            except BaseException as single:  # noqa: BLE001
                item.future.set_exception(single)
        return
    for item, result in zip(live, results, strict=True):
        item.future.set_result(result)
