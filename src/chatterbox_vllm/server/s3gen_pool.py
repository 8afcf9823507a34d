"""Several S3Gen worker processes behind one submit surface (CHATTERBOX_S3GEN_DEVICES, ..._WORKERS_PER_DEVICE).

Under load S3Gen saturates first, so a host's GPUs serve best as more S3Gen workers: one `S3GenProcess` per worker,
each on its device. `S3GenPool` offers what the synthesizer uses of one worker (`vocode`, `partial`, `call`,
`ready`, `shutdown`) and routes each piece:

* to the worker with the fewest pieces outstanding (given and not yet answered), ties taken in turn, so a burst
  spreads over every worker and a lone request goes to an idle one;
* passing over workers whose child is (re)starting, whose pieces wait for it: while any other one serves, nothing
  new queues behind a restart. A worker that died keeps its pieces: `S3GenProcess` restarts its child and sends
  them again. A piece whose worker gives up on it (its child died twice with it, or never came back) is sent to
  another worker once before its request fails.

The audio does not depend on the worker: a piece carries everything its vocode draws on (tokens, the voice's
conditionals, the seed, the flow noise), and every worker loads the same weights. A stream's partial vocodes carry
their state with them too (`incremental.PartialJob`: the decoded context's tokens and mel, the window's noise; the
stream's `IncrementalVocoder` stays in this process), so each may go to any worker. Streaming order is the
synthesizer's: it awaits each piece's future in order, wherever the piece ran.

`call` work (voice-clip analysis) runs on one thread of this process, as with one worker process.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ..incremental import PartialJob
from ..vocoder import VocodeJob
from .s3gen_process import S3GenProcess, S3GenProcessError
from .s3gen_worker import S3GenWorker

log = logging.getLogger(__name__)


class S3GenPool:
    """S3Gen workers in processes of their own, with one worker's submit surface; see the module's docstring."""

    def __init__(self, workers: Sequence[S3GenProcess], call_worker: S3GenWorker) -> None:
        """`workers`: started processes (each warming up); `call_worker`: this process's thread for `call` work."""
        if not workers:
            raise ValueError("an S3Gen pool needs at least one worker")
        self.workers = list(workers)
        self._calls = call_worker
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.ready: Future = Future()  # every worker warmed up: the phases (each the slowest worker's)
        self._await_ready()

    @property
    def max_batch(self) -> int:
        return self.workers[0].max_batch

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self.workers)

    def health(self) -> dict[str, Any]:
        """For /health: the layout, whether every worker is alive, their restarts, and each worker's entry."""
        workers = [worker.worker_health() for worker in self.workers]
        health: dict[str, Any] = {"layout": "process", "alive": all(w["alive"] for w in workers),
                                  "restarts": sum(w["restarts"] for w in workers), "workers": workers}  # fmt: skip
        failed = [f"{worker.device}: {worker.failed}" for worker in self.workers if worker.failed is not None]
        if failed:
            health["error"] = "; ".join(failed)
        return health

    # ------------------------------------------------------------------------------------------- submit
    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on this process's thread for such work (voice analysis)."""
        return self._calls.call(fn, *args)

    def vocode(self, job: VocodeJob, *, low_priority: bool = False) -> Future:
        """A whole piece's waveform from the least-loaded worker (`S3GenProcess.vocode`)."""
        return self._submit(lambda worker: worker.vocode(job, low_priority=low_priority))

    def partial(self, job: PartialJob) -> Future:
        """A partial vocode's result from the least-loaded worker (`S3GenProcess.partial`)."""
        return self._submit(lambda worker: worker.partial(job))

    def note_requests(self, in_progress: int) -> None:
        """Every worker hears of the server's speech requests in progress (`S3GenWorker.note_requests`)."""
        for worker in self.workers:
            worker.note_requests(in_progress)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every worker (each cancels what it holds), then the thread for `call` work."""
        stoppers = [threading.Thread(target=worker.shutdown, args=(timeout,), daemon=True) for worker in self.workers]
        for stopper in stoppers:  # side by side: each waits up to `timeout` for its child's running batch
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self._calls.shutdown(timeout)

    # ------------------------------------------------------------------------------------------ routing
    def pick(self, passed: frozenset[S3GenProcess] = frozenset()) -> S3GenProcess:
        """The worker the next piece goes to: among those serving now (else those not given up, else all), not in
        `passed`, the fewest pieces outstanding; ties in turn."""
        candidates = [w for w in self.workers if w not in passed] or self.workers
        for usable in ((w for w in candidates if w.accepting), (w for w in candidates if w.failed is None)):
            chosen = list(usable)
            if chosen:
                candidates = chosen
                break
        with self._lock:
            turn = next(self._turn)
        size = len(self.workers)
        return min(candidates, key=lambda w: (w.outstanding, (self.workers.index(w) - turn) % size))

    def _submit(self, send: Callable[[S3GenProcess], Future]) -> Future:
        """The piece's future; it follows the worker's, and is sent to another worker once if that one gives up on
        it. Cancelling it cancels the piece where it is."""
        outer: Future = Future()
        current: list[Future] = []

        def attempt(passed: frozenset[S3GenProcess]) -> None:
            worker = self.pick(passed)
            inner = send(worker)
            current[:] = [inner]
            inner.add_done_callback(lambda done: settle(done, worker, passed))

        def settle(inner: Future, worker: S3GenProcess, passed: frozenset[S3GenProcess]) -> None:
            if inner.cancelled():
                outer.cancel()
                return
            error = inner.exception()
            others = [w for w in self.workers if w is not worker and w not in passed and w.failed is None]
            if isinstance(error, S3GenProcessError) and not passed and others and not outer.cancelled():
                log.warning("S3Gen worker on %s gave up on a piece (%s); sending it to another worker",
                            worker.device, error)  # fmt: skip
                attempt(passed | {worker})
                return
            if not outer.set_running_or_notify_cancel():
                return
            if error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(inner.result())

        def forward_cancel(done: Future) -> None:
            if done.cancelled():
                for inner in current:
                    inner.cancel()

        attempt(frozenset())
        outer.add_done_callback(forward_cancel)
        return outer

    def _await_ready(self) -> None:
        """`ready` once every worker's child warmed up (the first failure's exception if one did not)."""
        pending = [worker.ready for worker in self.workers]
        left = [len(pending)]
        lock = threading.Lock()

        def done(_: Future) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            errors = [f.exception() for f in pending if f.exception() is not None]
            if errors:
                self.ready.set_exception(errors[0])
                return
            phases: dict[str, float] = {}
            for future in pending:
                for name, seconds in future.result().items():
                    phases[name] = max(seconds, phases.get(name, 0.0))
            self.ready.set_result(phases)

        for future in pending:
            future.add_done_callback(done)
