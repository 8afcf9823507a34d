"""The one thread that runs S3Gen (and voice-clip analysis) for the server, batching vocodes across requests.

With many requests in flight, S3Gen is the bottleneck when it runs a piece at a time: at batch one its flow
estimator is launch-bound and leaves the GPU mostly idle. So whole-piece vocodes that are waiting together
leave as one padded batch (`ChatterboxTTS.vocode_batch`, up to `max_batch` pieces and `max_batch_tokens` padded
tokens); nothing waits for a batch to fill, so a lone request pays no extra latency. Partial vocodes (a streamed
piece's first audio, `incremental`) are batched the same way among themselves: a batch of partials takes every
partial waiting, also those queued behind whole pieces (a stream's next audio waits on them); every partial has a
bounded shape (voice prompt, a bounded left context, its new tokens), so they stay cheap at any concurrency. Other work (voice analysis) runs alone, in arrival
order after the batch it was queued behind.

A batch that fails is retried job by job, so one bad piece fails only its own request.

On a GPU the thread queues its kernels on a CUDA stream of its own. On the legacy default stream they would be
waited for by every small synchronising copy other threads make there: T3's prompt embeddings, built on the event
loop for each new request and copied to the host for vLLM, would stall the whole server for as long as the S3Gen
work already queued (up to a batch, ~0.3 s on an H100). PyTorch's side streams do not synchronise with the default
stream, so those copies wait only for their own kernels.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..incremental import PartialJob, PartialResult, vocode_partials
from ..tts import ChatterboxTTS, VocodeJob
from .metrics import S3GEN_BATCH, S3GEN_PARTIAL_BATCH, S3GEN_WORK

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


@dataclass
class _Partial:
    job: PartialJob
    future: Future = field(default_factory=Future)


_STOP = object()

# A batch's padded size (rows x its longest row, voice prompt included) is bounded too: the flow encoder's
# attention holds rows x heads x (2 x length)^2 scores, so 4096 keeps a batch of the longest pieces (3 rows of
# ~1150 tokens) near 1 GB while typical sentences (~230 tokens with the prompt) still go 8 at a time.
MAX_BATCH_TOKENS = 4096


def padded_tokens(job: VocodeJob) -> int:
    """The tokens this piece puts through the flow: its voice prompt's and its own."""
    prompt = job.conds.gen.get("prompt_token")
    return len(job.tokens) + (int(prompt.shape[-1]) if prompt is not None else 0)


class S3GenWorker:
    def __init__(self, tts: ChatterboxTTS, max_batch: int, max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        self.tts = tts
        self.max_batch = max(1, max_batch)
        self.max_batch_tokens = max_batch_tokens
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # What runs a batch of partials (a benchmark's first-audio trace wraps it to time the S3Gen part).
        self.vocode_partials: Callable[[ChatterboxTTS, list[PartialJob]], list[PartialResult]] = vocode_partials
        self.stream: torch.cuda.Stream | None = None  # the thread's own CUDA stream (set when it starts, on a GPU)
        self._thread = threading.Thread(target=self._run, name="s3gen", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- submit
    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the S3Gen thread (under inference mode)."""
        item = _Call(fn, args)
        self._queue.put(item)
        return item.future

    def vocode(self, job: VocodeJob) -> Future:
        """The waveform of a whole piece (float32, 24 kHz), batched with other pieces waiting at the time."""
        item = _Vocode(job)
        self._queue.put(item)
        return item.future

    def partial(self, job: PartialJob) -> Future:
        """A partial vocode's result (`incremental.PartialResult`), batched with other requests' partials."""
        item = _Partial(job)
        self._queue.put(item)
        return item.future

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel the work still queued, let the running batch finish, stop the thread."""
        self._cancel_rest()
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)

    # ---------------------------------------------------------------------------------------------- run
    def _next(self, pending: deque, *, wait: bool) -> Any:
        if pending:
            return pending.popleft()
        return self._queue.get() if wait else self._queue.get_nowait()

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
        pending: deque = deque()  # taken from the queue but left for the next batch (it would not fit this one)
        while True:
            item = self._next(pending, wait=True)
            if item is _STOP:
                self._cancel_rest()
                return
            if isinstance(item, _Call):
                self._run_call(item)
                continue
            if isinstance(item, _Partial):
                self._serve_partials(item, pending)
                continue
            batch, later = [item], []
            width = padded_tokens(item.job)
            while len(batch) < self.max_batch:
                try:
                    more = self._next(pending, wait=False)
                except queue.Empty:
                    break
                if isinstance(more, _Vocode):
                    wider = max(width, padded_tokens(more.job))
                    if wider * (len(batch) + 1) > self.max_batch_tokens:
                        pending.appendleft(more)  # too big beside these: first of the next batch
                        break
                    batch.append(more)
                    width = wider
                else:
                    later.append(more)
                    if more is _STOP:
                        break
            self._run_batch(batch)
            for other in later:
                if other is _STOP:
                    for left in pending:
                        left.future.cancel()
                    self._cancel_rest()
                    return
                if isinstance(other, _Partial):
                    self._serve_partials(other, pending)
                else:
                    self._run_call(other)

    def _cancel_rest(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.future.cancel()

    @staticmethod
    @S3GEN_WORK.time()
    def _run_call(item: _Call) -> None:
        if not item.future.set_running_or_notify_cancel():
            return  # its request was cancelled while it waited
        try:
            with torch.inference_mode():
                item.future.set_result(item.fn(*item.args))
        except BaseException as exc:  # noqa: BLE001 - delivered to the request that asked
            item.future.set_exception(exc)

    @S3GEN_WORK.time()
    def _run_batch(self, batch: list[_Vocode]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        S3GEN_BATCH.observe(len(live))
        try:
            wavs = self.tts.vocode_batch([item.job for item in live])
        except BaseException as exc:  # noqa: BLE001
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            log.warning("S3Gen batch of %d failed (%s); vocoding its pieces one by one", len(live), exc)
            for item in live:
                try:
                    item.future.set_result(self.tts.vocode_batch([item.job])[0])
                except BaseException as single:  # noqa: BLE001
                    item.future.set_exception(single)
            return
        for item, wav in zip(live, wavs, strict=True):
            item.future.set_result(np.asarray(wav, dtype=np.float32))

    # -------------------------------------------------------------------------------------------- partials
    def _serve_partials(self, first: _Partial, pending: deque) -> None:
        """Run `first` with the other partials waiting now, as one batch (up to `max_batch` rows and
        `max_batch_tokens` padded tokens). What else was taken from the queue on the way goes back to the front of
        `pending`, in its order, for the serve loop."""
        batch, kept = [first], []
        width = first.job.padded_tokens
        while len(batch) < self.max_batch:
            try:
                more = self._next(pending, wait=False)
            except queue.Empty:
                break
            if more is _STOP:
                kept.append(more)
                break
            if isinstance(more, _Partial):
                wider = max(width, more.job.padded_tokens)
                if wider * (len(batch) + 1) <= self.max_batch_tokens:
                    batch.append(more)
                    width = wider
                    continue
            kept.append(more)
        pending.extendleft(reversed(kept))
        self._run_partials(batch)

    @S3GEN_WORK.time()
    def _run_partials(self, batch: list[_Partial]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return  # every request that asked was cancelled while it waited
        S3GEN_PARTIAL_BATCH.observe(len(live))
        try:
            results = self.vocode_partials(self.tts, [item.job for item in live])
        except BaseException as exc:  # noqa: BLE001 - delivered to the requests that asked
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            log.warning("S3Gen partial batch of %d failed (%s); running its partials one by one", len(live), exc)
            for item in live:
                try:
                    item.future.set_result(self.vocode_partials(self.tts, [item.job])[0])
                except BaseException as single:  # noqa: BLE001
                    item.future.set_exception(single)
            return
        for item, result in zip(live, results, strict=True):
            item.future.set_result(result)
