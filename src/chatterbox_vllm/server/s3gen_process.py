"""S3Gen in a worker process of its own (CHATTERBOX_S3GEN_LAYOUT=process), beside vLLM's engine core process.

In the default layout S3Gen runs on a thread of the server process (`S3GenWorker`), where it shares the GIL with
the event loop and T3's output processing. Here a child process, started with multiprocessing's *spawn* (a fork
after CUDA or vLLM started is unsafe), loads S3Gen alone (`Vocoder.load`: no T3, no vLLM) and runs the same
batching: an `S3GenWorker` over the Vocoder, inside the child. `S3GenProcess` offers the worker's submit surface
(`vocode`, `partial`, `call`, `shutdown`), so the synthesizer uses either layout alike.

* Requests cross a pipe as plain pickled data: tokens, seed, host tensors. A voice (its conditionals' S3Gen part,
  `gen`) gets an id in the parent, keyed weakly by its x-vector tensor; its tensors cross the first time only, and
  the child keeps the last `VOICE_CACHE` voices (least recently used go; the parent mirrors that order, so it knows
  when to send one again), which keeps the child's per-voice flow conditioning cached as in-process.
* Results (float32 waveforms, `PartialResult`s) and each batch's timing come back to a receiver thread that
  resolves the futures and records the S3Gen metrics in the server's registry (/metrics), as the thread does.
* `call` work (voice-clip analysis) stays in the parent, on a thread of its own: it needs the voice encoder and the
  speech tokenizer, which only the parent loads. S3Gen's warm-ups (CUDA graphs, the first partial) run in the
  child before it says it is ready; `ready` resolves then.
* If the child dies (a crash, the OOM killer, SIGKILL), the receiver sees the pipe close, starts a new child and
  sends it every piece still in flight, so nothing accepted is lost. A piece sent twice whose second child dies too
  fails its request with `S3GenProcessError`. A first child that dies before it is ready is not restarted (the
  model fails to load, with the reason), nor are restarted ones that die while starting `MAX_FAILED_STARTS` times
  in a row: then S3Gen's requests fail and /health says why.
* `shutdown` asks the child to stop, then terminates it; an exit handler kills any child still running, and a child
  whose parent is gone (its pipe closed) exits on its own.

On one GPU the two processes time-slice (kernels of different processes do not overlap) unless NVIDIA MPS runs, and
each holds a CUDA context of its own (~0.5 GB, counted by `vram_plan`).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from ..incremental import PartialJob, warm_up_first_partial
from ..settings import Settings
from ..vocoder import VocodeJob, Vocoder, VocoderSpec
from .metrics import S3GEN_PROCESS_RESTARTS, S3GEN_WORKER_RESTARTS
from .s3gen_worker import S3GenWorker, record_work

log = logging.getLogger(__name__)

VOICE_CACHE = 64  # voices the child keeps (their tensors and flow conditioning); older ones are sent again
MAX_FAILED_STARTS = 3  # restarted children that died before they were ready, in a row, before S3Gen is given up


class S3GenProcessError(RuntimeError):
    """The S3Gen process could not vocode a piece: it died twice while the piece was in it, or never started."""


@dataclass(frozen=True)
class WarmUp:
    """What the child warms up before it says it is ready: S3Gen's graphs up to `max_new_tokens` tokens, and the
    first partial vocode of `first_partial_tokens` tokens (0: none): its graphs for batches of up to `rows` (the
    worker's batch size) and a run of it (`warm_up_first_partial`)."""

    max_new_tokens: int
    first_partial_tokens: int = 0
    rows: int = 1


@dataclass(frozen=True)
class _ChildConfig:
    spec: VocoderSpec
    max_batch: int
    max_batch_tokens: int | None
    warm_up: WarmUp
    voice_cache: int = VOICE_CACHE
    low_rows_beside: int | None = None
    max_pause_s: float = 0.0  # `S3GenWorker`'s


@dataclass
class _Voice:
    """A voice as the child holds it: the conditionals' S3Gen part, on the child's device (`VocodeJob.conds`)."""

    gen: dict[str, Any]


@dataclass
class _InFlight:
    kind: str  # "vocode" | "partial"
    job: VocodeJob | PartialJob
    future: Future
    tries: int = 0  # children it was sent to
    low_priority: bool = False  # a long-form job's piece (`S3GenWorker.vocode`)


# ------------------------------------------------------------------------------------------------ the wire
def _send(conn: Connection, message: tuple) -> None:
    """Plain pickle (tensors by value), not multiprocessing's pickler: torch registers shared-memory reductions
    there, which would tie each tensor's lifetime to file descriptors handed across."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> tuple:
    return pickle.loads(conn.recv_bytes())


def _host(value: Any) -> Any:
    """A tensor as it crosses: on the host, compacted (pickling a view sends its whole storage: the stream's noise is
    a slice of a buffer for max_new_tokens)."""
    return value.detach().cpu().clone() if torch.is_tensor(value) else value


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------- the child
def _child_main(conn: Connection, config: _ChildConfig) -> None:
    """The child: load S3Gen, warm it up, serve what the pipe brings until it says stop or closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us in order
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            _send(conn, message)

    def report(kind: str, seconds: float, rows: int) -> None:
        """A batch's timing for the parent's metrics; never fails the worker (a parent gone ends us below)."""
        try:
            send(("work", kind, seconds, rows))
        except (OSError, ValueError):
            pass

    try:
        from ..process_setup import configure_process  # the parent's TF32 and compile caches, before S3Gen loads

        configure_process(config.spec.process)
        device = torch.device(config.spec.device)
        # Its CUDA context, streams and graphs on its own GPU (CHATTERBOX_S3GEN_DEVICES). A plain "cuda" means the
        # current GPU, and set_device refuses a device without an index (an H200 start failed so, 2026-12-03).
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        vocoder = Vocoder.load(config.spec)
    except BaseException as exc:  # noqa: BLE001 - said to the parent, which fails its readiness with it
        send(("ready", {}, _portable(exc)))
        return
    worker = S3GenWorker(
        vocoder, config.max_batch, config.max_batch_tokens, record=report, low_rows_beside=config.low_rows_beside,
        max_pause_s=config.max_pause_s,
    )  # fmt: skip
    warm = config.warm_up
    graphs = worker.call(vocoder.warm_up, warm.max_new_tokens)
    partial = worker.call(_warm_up_partial_logged, vocoder, warm.first_partial_tokens, warm.rows)

    def ready(_: Future) -> None:
        error = graphs.exception() if not graphs.cancelled() else None
        try:
            send(("ready", dict(vocoder.startup_phases), _portable(error) if error is not None else None))
        except (OSError, ValueError):
            pass

    partial.add_done_callback(ready)  # after the graphs: one thread runs both in order
    voices: OrderedDict[int, _Voice] = OrderedDict()
    futures: dict[int, Future] = {}

    def deliver(request: int, future: Future) -> None:
        futures.pop(request, None)
        if future.cancelled():
            return  # the parent cancelled it and forgot it
        error = future.exception()
        try:
            send(("error", request, _portable(error)) if error is not None else ("result", request, future.result()))
        except (OSError, ValueError):
            pass  # the parent is gone; the reader below ends the process

    try:
        while True:
            message = _recv(conn)
            kind = message[0]
            if kind == "stop":
                break
            if kind == "requests":
                worker.note_requests(message[1])
            elif kind == "voice":
                _, voice_id, gen = message
                device = vocoder.device
                voices[voice_id] = _Voice({k: v.to(device) if torch.is_tensor(v) else v for k, v in gen.items()})
                while len(voices) > config.voice_cache:
                    voices.popitem(last=False)
            elif kind == "cancel":
                future = futures.get(message[1])
                if future is not None:
                    future.cancel()
            elif kind in ("vocode", "partial"):
                _, request, voice_id, job = message
                voice = voices.get(voice_id)
                if voice is None:  # the parent's mirror of this cache went wrong: fail the piece, not the child
                    send(("error", request, S3GenProcessError(f"voice {voice_id} is not in the S3Gen process")))
                    continue
                voices.move_to_end(voice_id)
                if kind == "vocode":
                    tokens, seed, noise, low = job
                    piece = VocodeJob(tokens, voice, seed, noise)  # type: ignore[arg-type]
                    future = worker.vocode(piece, low_priority=low)
                else:
                    future = worker.partial(dataclasses.replace(job, voice=voice.gen))
                futures[request] = future
                future.add_done_callback(functools.partial(deliver, request))
    except (EOFError, OSError):
        pass  # the parent is gone (or closed the pipe): stop, nothing is waiting for the results
    worker.shutdown()
    os._exit(0)  # no interpreter teardown: worker threads and CUDA need none, and it cannot hang


def _warm_up_partial_logged(vocoder: Vocoder, first_tokens: int, rows: int) -> None:
    try:
        warm_up_first_partial(vocoder, first_tokens, rows)
    except Exception as exc:  # noqa: BLE001 - the warm-up is an optimisation
        log.warning("warming up the first partial vocode failed (%s: %s); the first stream pays its first call",
                    type(exc).__name__, exc)  # fmt: skip


# ---------------------------------------------------------------------------------------------- the parent
_LIVE: weakref.WeakSet[S3GenProcess] = weakref.WeakSet()


@atexit.register
def _kill_children() -> None:
    """At the server's exit: no S3Gen process outlives it (shutdown not called, an exit on an error)."""
    for process in list(_LIVE):
        process.kill()


class S3GenProcess:
    """S3Gen vocoding in a child process, with `S3GenWorker`'s submit surface; see the module's docstring."""

    def __init__(
        self, spec: VocoderSpec, max_batch: int, *, warm_up: WarmUp, call_worker: S3GenWorker | None,
        max_batch_tokens: int | None = None, model: str = "", voice_cache: int = VOICE_CACHE,
        low_rows_beside: int | None = None, max_pause_s: float = 0.0,
    ) -> None:  # fmt: skip
        """`call_worker`: the parent's thread for `call` work (voice analysis; None: given later by
        `use_call_worker`, when the process starts before the model it serves has loaded). `model`: the served
        model's id, the restart counter's label. `voice_cache`: voices the child keeps. `low_rows_beside`,
        `max_pause_s`: `S3GenWorker`'s."""
        self.max_batch = max(1, max_batch)
        self._config = _ChildConfig(spec, self.max_batch, max_batch_tokens, warm_up, max(1, voice_cache),
                                    low_rows_beside, max_pause_s)  # fmt: skip
        self._requests_in_progress = 0  # the last count `note_requests` heard (sent again to a restarted child)
        self._calls = call_worker
        self._model = model
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._ids = itertools.count()
        self._inflight: dict[int, _InFlight] = {}
        self._voice_ids: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # x-vector tensor -> voice id
        self._sent_voices: OrderedDict[int, None] = OrderedDict()  # the child's voice cache, mirrored
        self._closing = False
        self._restarting = False
        self._failed: BaseException | None = None
        self._failed_starts = 0
        self.restarts = 0
        self.ready: Future = Future()  # the first child's warm-ups done (its exception if they failed)
        self._child_ready = False
        S3GEN_PROCESS_RESTARTS.labels(model=model)  # the series from 0
        S3GEN_WORKER_RESTARTS.labels(model=model, device=self.device)
        self._process, self._conn = self._start()
        _LIVE.add(self)
        self._receiver = threading.Thread(target=self._receive, name="s3gen-receiver", daemon=True)
        self._receiver.start()

    @classmethod
    def from_settings(
        cls, spec: VocoderSpec, settings: Settings, *, device: str, model: str, call_worker: S3GenWorker | None = None
    ) -> S3GenProcess:
        """The server's S3Gen process on `device`: batches of up to the S3Gen batch size (at most T3's batch), warmed
        up for the settings' longest piece and the first partial, long-form rows as the settings bound them."""
        batch = settings.s3gen_rows()
        # the first partial's graphs for every row bucket up to the batch (`warm_up_first_partial`)
        warm_up = WarmUp(settings.max_new_tokens, settings.stream_first_audio_tokens, batch)
        return cls(
            dataclasses.replace(spec, device=device), batch, warm_up=warm_up,
            call_worker=call_worker, model=model, low_rows_beside=settings.job_rows_beside_requests,
            max_pause_s=settings.job_max_defer_s,
        )  # fmt: skip

    def use_call_worker(self, call_worker: S3GenWorker) -> None:
        """The parent's thread for `call` work, for a process started without one."""
        self._calls = call_worker

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def device(self) -> str:
        """The device the child vocodes on (`VocoderSpec.device`)."""
        return self._config.spec.device

    @property
    def outstanding(self) -> int:
        """Pieces given to this worker and not yet answered (waiting for a restarted child included)."""
        return len(self._inflight)

    @property
    def accepting(self) -> bool:
        """Whether its child is up and warmed up, so a piece sent now runs without waiting for a (re)start."""
        return self._child_ready and self._failed is None and not self._closing

    @property
    def failed(self) -> BaseException | None:
        """Why it stopped for good (its child never started, or kept dying while starting); None while it serves."""
        return self._failed

    def worker_health(self) -> dict[str, Any]:
        """For /health's `workers`: its device, pid, whether alive, restarts and pieces outstanding."""
        return {"device": self.device, "pid": self.pid, "alive": self._process.is_alive(), "restarts": self.restarts,
                "outstanding": self.outstanding}  # fmt: skip

    def health(self) -> dict[str, Any]:
        """For /health: the layout, the child's pid, whether it is alive and how often it was restarted."""
        health: dict[str, Any] = {
            "layout": "process", "pid": self.pid, "alive": self._process.is_alive(), "restarts": self.restarts,
        }  # fmt: skip
        if self._failed is not None:
            health["error"] = str(self._failed)
        return health

    # ------------------------------------------------------------------------------------------- submit
    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the parent's own thread for such work (voice analysis), not in the child."""
        if self._calls is None:
            raise RuntimeError("the S3Gen process has no thread for voice analysis yet (use_call_worker)")
        return self._calls.call(fn, *args)

    def vocode(self, job: VocodeJob, *, low_priority: bool = False) -> Future:
        """The waveform of a whole piece (float32, 24 kHz), batched in the child with other pieces waiting there
        (`low_priority`: after the interactive ones, as `S3GenWorker.vocode`)."""
        return self._submit("vocode", job, low_priority)

    def partial(self, job: PartialJob) -> Future:
        """A partial vocode's result (`incremental.PartialResult`), batched in the child with other partials."""
        return self._submit("partial", job)

    def note_requests(self, in_progress: int) -> None:
        """The server's speech requests in progress, told to the child's worker (`S3GenWorker.note_requests`)."""
        with self._lock:
            self._requests_in_progress = in_progress
            if not (self._restarting or self._closing):  # a restarted child hears the count once it is up
                self._send_requests_count()

    def _send_requests_count(self) -> None:
        """The last count `note_requests` heard, to the current child (lock held)."""
        try:
            _send(self._conn, ("requests", self._requests_in_progress))
        except (OSError, ValueError):
            pass  # the child is gone: the receiver restarts it

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel what is in flight, ask the child to stop (it finishes the running batch), then end it; stop the
        parent's thread for `call` work."""
        with self._lock:
            self._closing = True
            left = list(self._inflight.values())
            self._inflight.clear()
            try:
                _send(self._conn, ("stop",))
            except (OSError, ValueError):
                pass
        for item in left:
            item.future.cancel()
        self._process.join(timeout)
        self.kill()
        self._receiver.join(timeout=5)
        if self._calls is not None:
            self._calls.shutdown(timeout)
        _LIVE.discard(self)

    def kill(self) -> None:
        """End the child now (terminate, then kill) and close the pipe."""
        self._closing = True
        process = self._process
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        self._conn.close()

    # ------------------------------------------------------------------------------------ child's life
    def _start(self) -> tuple[Any, Connection]:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_child_main, args=(child, self._config), name="chatterbox-s3gen")
        process.start()
        child.close()  # only the child holds its end: its death closes the pipe
        log.info("S3Gen process started (pid %d)", process.pid)
        return process, parent

    def _submit(self, kind: str, job: VocodeJob | PartialJob, low_priority: bool = False) -> Future:
        future: Future = Future()
        with self._lock:
            if self._failed is not None or self._closing:
                future.set_exception(self._failed or S3GenProcessError("the S3Gen process is shutting down"))
                return future
            request = next(self._ids)
            item = _InFlight(kind, job, future, low_priority=low_priority)
            self._inflight[request] = item
            if not self._restarting:
                self._send_piece(request, item)
        future.add_done_callback(functools.partial(self._forget_cancelled, request))
        return future

    def _send_piece(self, request: int, item: _InFlight) -> None:
        """Send one piece to the current child, its voice first if the child does not hold it (lock held)."""
        gen = item.job.conds.gen if isinstance(item.job, VocodeJob) else item.job.voice
        voice_id = self._voice_id(gen)
        item.tries += 1
        try:
            if voice_id in self._sent_voices:
                self._sent_voices.move_to_end(voice_id)
            else:
                _send(self._conn, ("voice", voice_id, {k: _host(v) for k, v in gen.items()}))
                self._sent_voices[voice_id] = None
                while len(self._sent_voices) > self._config.voice_cache:
                    self._sent_voices.popitem(last=False)
            if isinstance(item.job, VocodeJob):
                job = item.job
                wire: Any = (list(job.tokens), job.seed, _host(job.noise), item.low_priority)
            else:
                wire = dataclasses.replace(
                    item.job, voice={}, context=_host(item.job.context), new=_host(item.job.new),
                    context_mel=_host(item.job.context_mel), noise=_host(item.job.noise),
                )  # fmt: skip
            _send(self._conn, (item.kind, request, voice_id, wire))
        except (OSError, ValueError):
            pass  # the child is gone: the receiver restarts it and sends this piece again

    def _voice_id(self, gen: Any) -> int:
        key = gen["embedding"]
        voice_id = self._voice_ids.get(key)
        if voice_id is None:
            voice_id = next(self._ids)
            self._voice_ids[key] = voice_id
        return voice_id

    def _forget_cancelled(self, request: int, future: Future) -> None:
        """A request gone (its client hung up): forget its piece, and tell the child to skip it if still queued."""
        if not future.cancelled():
            return
        with self._lock:
            if self._inflight.pop(request, None) is None or self._closing:
                return
            try:
                _send(self._conn, ("cancel", request))
            except (OSError, ValueError):
                pass

    def _receive(self) -> None:
        """Resolve futures from the child's messages; on the pipe's end, restart the child (unless closing)."""
        while True:
            try:
                message = _recv(self._conn)
            except (EOFError, OSError, ValueError):
                if self._closing or not self._restart():
                    return
                continue
            self._handle(message)

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "work":
            _, work, seconds, rows = message
            record_work(work, seconds, rows, device=self.device)
        elif kind == "ready":
            _, phases, error = message
            self._child_ready = error is None
            if not self.ready.done():
                if error is not None:
                    self.ready.set_exception(error)
                else:
                    self.ready.set_result(phases)
            elif error is not None:
                log.error("the restarted S3Gen process failed to warm up: %s: %s", type(error).__name__, error)
            else:
                log.info("S3Gen process %d ready", self.pid)
        elif kind in ("result", "error"):
            _, request, value = message
            with self._lock:
                item = self._inflight.pop(request, None)
            if item is None or not item.future.set_running_or_notify_cancel():
                return  # cancelled meanwhile
            if kind == "error":
                item.future.set_exception(value)
            else:
                item.future.set_result(value)

    def _restart(self) -> bool:
        """The child died: start another and send it what was in flight. False when it is not restarted (it died
        before it was ever ready, or the server is closing): then everything in flight fails."""
        was_ready, self._child_ready = self._child_ready, False  # the pool passes over it from now
        old = self._process
        old.join(5)
        code = old.exitcode
        if not was_ready:  # it died while loading or warming up
            self._failed_starts += 1
            first = not self.ready.done() or self.ready.exception() is not None
            if first or self._failed_starts >= MAX_FAILED_STARTS:
                what = "before it was ready" if first else f"while starting, {self._failed_starts} times in a row"
                error = S3GenProcessError(
                    f"the S3Gen process (pid {old.pid}) exited with code {code} {what}; the server log says why"
                )
                log.error("%s; S3Gen is not restarted, its requests fail", error)
                self._fail_all(error)
                return False
        else:
            self._failed_starts = 0
        with self._lock:
            if self._closing:
                return False
            self._restarting = True  # submissions meanwhile wait in _inflight and are sent below
            self._child_ready = False  # until the new child says so (see the check above)
            self.restarts += 1
            pending = len(self._inflight)
        S3GEN_PROCESS_RESTARTS.labels(model=self._model).inc()
        S3GEN_WORKER_RESTARTS.labels(model=self._model, device=self.device).inc()
        log.error("the S3Gen process on %s (pid %s) died (exit code %s); starting another, %d pieces in flight go "
                  "to it", self.device, old.pid, code, pending)  # fmt: skip
        started = time.monotonic()
        process, conn = self._start()  # no lock held: the event loop's submissions do not wait for a spawn
        failed: list[_InFlight] = []
        with self._lock:
            self._conn.close()
            self._process, self._conn = process, conn
            self._sent_voices.clear()
            self._restarting = False
            if self._closing:
                return False
            self._send_requests_count()
            for request, item in list(self._inflight.items()):
                if item.tries >= 2:  # its second child died with it too
                    failed.append(self._inflight.pop(request))
                    continue
                self._send_piece(request, item)  # queued behind the new child's warm-up
        for item in failed:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(S3GenProcessError(
                    "the S3Gen process died twice while vocoding this piece (the server log has the exit codes)"
                ))  # fmt: skip
        log.info("S3Gen process restarted (pid %d) in %.1f s; %d pieces resent, %d failed after their second try",
                 process.pid, time.monotonic() - started, pending - len(failed), len(failed))  # fmt: skip
        return True

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            self._failed = error
            left = list(self._inflight.values())
            self._inflight.clear()
        if not self.ready.done():
            self.ready.set_exception(error)
        for item in left:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)
