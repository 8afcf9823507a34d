"""The background runner of long-form jobs: one asyncio task, started with the server, that speaks every unfinished
job piece by piece and stores each finished piece (`store`).

* Resume: at start, jobs left `running` (a server stopped or killed mid-job) are queued again, and every queued job
  goes on from its finished pieces: piece i is always spoken with seed + i, so the pieces made after a restart are
  those an uninterrupted run makes.
* Fairness: jobs run below /v1/audio/speech. An idle server decodes a whole T3 batch of job pieces (of all jobs
  together, taken in turn); while requests are in progress or came within the last 2 s, at most
  CHATTERBOX_JOB_T3_ROWS_BESIDE_REQUESTS, leaving T3's batch and its step time to requests (`capacity`, re-checked
  before each new piece). A decoded piece waits before S3Gen while requests are in progress, and goes
  CHATTERBOX_JOB_ROWS_BESIDE_REQUESTS at a time while they keep coming (`server/job_gate.py`); in S3Gen it joins a
  batch only after the interactive pieces waiting (`S3GenWorker.vocode(low_priority=True)`): a batch under way cannot
  be interrupted, so this bounds how long a request's first audio waits behind jobs.
* A piece that fails is tried once more; failing again, it fails its job (others go on). An OSError storing a piece
  (a full disk) fails the job with code `disk_full`.
* Progress: the store's counters after every piece, and events for SSE subscribers (`events`), in piece order (a
  piece finished before an earlier one is announced when the pieces before it are done: its place on the timeline
  is known only then). The ETA comes from the job's own recent pieces: audio seconds made per wall second, and audio
  seconds per character, over the characters left.
* Cancel: a deleted job's pieces in flight are cancelled (which aborts their T3 requests), then its files and rows go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio.mel import S3GEN_SAMPLE_RATE as SAMPLE_RATE
from ..server.errors import APIError, describe_failure, error_detail
from ..server.registry import ModelRegistry
from ..server.schemas import Job, JobChapter, JobEndEvent, JobPiece, JobPieceEvent, SpeechRequest
from ..server.speech_job import resolve_voice
from ..server.synthesis import JobVoice, Synthesizer
from ..settings import Settings
from . import timeline
from .events import JobEvents
from .store import JobRow, JobStore, Piece

log = logging.getLogger(__name__)

RATE_WINDOW = 8  # recent pieces the ETA's rates are measured over
IDLE_POLL_S = 0.5  # how often the runner looks again when nothing woke it (interactive load changes, models load)


@dataclass
class _Running:
    """A job the runner works on: its voice, what is left, its pieces in flight and its recent rate."""

    row: JobRow
    synthesizer: Synthesizer
    voice: JobVoice
    pieces: list[Piece]
    todo: deque[int]  # pieces not started, in order (a failed piece's retry goes first)
    done: set[int]
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    saves: set[asyncio.Future[None]] = field(default_factory=set)
    retried: set[int] = field(default_factory=set)
    prefix: int = 0  # pieces 0..prefix-1 are done and announced
    prefix_end: int = 0  # their timeline's end (samples)
    samples: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    recent: deque[tuple[float, float, int]] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW + 1))

    def eta(self) -> float | None:
        """Seconds left: the characters left x audio seconds per character / audio seconds per wall second, both
        over the recent pieces. None before the first piece."""
        if not self.recent:
            return None
        window = list(self.recent)
        begin = window[0][0] if len(window) > RATE_WINDOW else self.started
        used = window[1:] if len(window) > RATE_WINDOW else window
        wall = window[-1][0] - begin
        audio = sum(a for _, a, _ in used)
        chars = sum(c for _, _, c in used)
        if wall <= 0 or audio <= 0 or chars <= 0:
            return None
        left = sum(len(p.text) for p in self.pieces if p.index not in self.done)
        return max(0.0, left * (audio / chars) / (audio / wall) - (time.monotonic() - window[-1][0]))


def piece_seed(seed: int, index: int) -> int:
    """Piece i's seed: the job's + i (within the seeds a request accepts)."""
    return (seed + index) % 2**63


def speech_request(stored: dict[str, Any]) -> SpeechRequest:
    """A job's request as the synthesizer reads it: its model, voice and controls (the text comes piece by piece)."""
    fields = {k: v for k, v in stored.items() if k not in ("input", "response_format", "title", "input_format")}
    return SpeechRequest.model_validate({**fields, "input": "-"})


class JobRunner:
    def __init__(self, store: JobStore, models: ModelRegistry, settings: Settings, events: JobEvents) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.events = events
        self.max_batch = settings.limits().max_batch_size
        self._running: dict[str, _Running] = {}
        self._turn = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ life
    def start(self) -> None:
        requeued = self.store.requeue_running()
        if requeued:
            log.info("%d long-form jobs interrupted by the last stop resume from their last finished piece", requeued)
        self._task = asyncio.create_task(self._loop(), name="jobs-runner")

    async def stop(self) -> None:
        """Cancel the loop and every piece in flight; their jobs stay `running` in the store and are queued again at
        the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in list(self._running.values()):
            await self._cancel_pieces(job)
        self._running.clear()

    def wake(self) -> None:
        self._wake.set()

    def in_flight(self) -> int:
        return sum(len(job.tasks) for job in self._running.values())

    def capacity(self) -> int:
        """Pieces the jobs may have in flight now. Idle: T3's whole batch. While speech requests are in progress or
        came within the last seconds (`Admission.requests_recent`): at most CHATTERBOX_JOB_T3_ROWS_BESIDE_REQUESTS
        (every row lengthens a request's T3 steps), and never more than T3's batch less the requests in progress
        and a quarter of the batch kept free for the next ones (a request that finds T3's batch full of job pieces
        waits for one to finish). At least one: a job always moves on."""
        ready = self.models.loaded()
        if not ready:
            return self.max_batch
        admission = ready[0].synthesizer.admission  # one admission for every model
        if not admission.requests_recent():
            return self.max_batch
        interactive = admission.active
        reserve = self.max_batch // 4 if interactive else 0
        beside = min(self.settings.job_t3_rows_beside_requests, self.max_batch - interactive - reserve)
        return max(1, beside)

    def eta(self, job_id: str) -> float | None:
        job = self._running.get(job_id)
        return job.eta() if job is not None else None

    # ------------------------------------------------------------------------------------------ loop
    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._take_jobs()
                self._dispatch()
            except Exception as exc:  # noqa: BLE001 - the runner outlives any one job's trouble
                log.error("jobs runner: %s", describe_failure(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    async def _take_jobs(self) -> None:
        """Start working on every queued job not yet running whose model is ready."""
        for row in await asyncio.to_thread(self.store.unfinished):
            if row.id in self._running:
                continue
            try:
                job = await self._open(row)
            except APIError as exc:
                self._fail_row(row, error_detail(exc.status, exc.message, exc.param, exc.code).model_dump())
                continue
            except Exception as exc:  # noqa: BLE001 - its voice could not be prepared: this job fails, not the others
                log.error("job %s: preparing its voice failed: %s", row.id, describe_failure(exc))
                detail = error_detail(500, "the job's voice could not be prepared (the server log says why)", "voice",
                                      "voice_unavailable")  # fmt: skip
                self._fail_row(row, detail.model_dump())
                continue
            if job is None or await asyncio.to_thread(self.store.get, row.id) is None:
                continue  # its model is not ready yet, or it was deleted meanwhile
            self._running[row.id] = job
            if row.state != "running":
                await asyncio.to_thread(self.store.set_state, row.id, "running")
            if not job.todo and not job.tasks:  # every piece was done before a restart
                await self._complete(job)

    async def _open(self, row: JobRow) -> _Running | None:
        """The job's voice and pieces (None while its model is not ready); an APIError if it can no longer be spoken
        (its voice was deleted, say)."""
        request = speech_request(row.request)
        state = self.models.for_request(request.model)
        if state.loaded is None:
            if state.status == "error":
                raise APIError(
                    503, f"the model {request.model!r} failed to load: {state.error}", code="model_unavailable"
                )
            return None
        model = state.loaded
        voice = resolve_voice(request, model, self.models)
        prepared = await model.synthesizer.prepare_job(request, voice, [], row.seed)
        pieces = await asyncio.to_thread(self.store.pieces, row.id)
        done = {p.index for p in pieces if p.done}
        job = _Running(row, model.synthesizer, prepared, pieces, deque(p.index for p in pieces if not p.done), done)
        job.samples = {p.index: int(p.samples or 0) for p in pieces if p.done}
        self._advance_prefix(job, announce=False)
        return job

    def _dispatch(self) -> None:
        """Start pieces, one job after another in turn, while there is room."""
        while self.in_flight() < self.capacity():
            jobs = [job for job in self._running.values() if job.todo]
            if not jobs:
                return
            job = jobs[self._turn % len(jobs)]
            self._turn += 1
            index = job.todo.popleft()
            job.tasks[index] = asyncio.create_task(self._piece(job, job.pieces[index]), name=f"{job.row.id}:{index}")

    # -------------------------------------------------------------------------------------- a piece
    async def _piece(self, job: _Running, piece: Piece) -> None:
        try:
            try:
                wav = await job.synthesizer.speak_piece(piece.text, job.voice, piece_seed(job.row.seed, piece.index))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - tried once more, then it fails its job
                if piece.index not in job.retried:
                    job.retried.add(piece.index)
                    log.warning(
                        "job %s: piece %d failed (%s); trying it again", job.row.id, piece.index, describe_failure(exc)
                    )
                    job.todo.appendleft(piece.index)
                    return
                log.error("job %s: piece %d failed twice: %s", job.row.id, piece.index, describe_failure(exc))
                await self._fail(
                    job,
                    error_detail(
                        500,
                        f"piece {piece.index} could not be spoken (the server log says why)",
                        None,
                        "synthesis_failed",
                    ).model_dump(),
                )
                return
            save = asyncio.get_running_loop().run_in_executor(None, self.store.save_piece, job.row.id, piece.index, wav)
            job.saves.add(save)
            try:
                await asyncio.shield(save)  # a cancel waits for nothing, but `delete` waits for the file
            except OSError as exc:
                log.error("job %s: storing piece %d failed: %s", job.row.id, piece.index, describe_failure(exc))
                await self._fail(
                    job,
                    error_detail(
                        500,
                        "the data directory is full or not writable: the piece could not be stored",
                        None,
                        "disk_full",
                    ).model_dump(),
                )
                return
            finally:
                job.saves.discard(save)
            self._finished_piece(job, piece, wav)
            if len(job.done) == len(job.pieces):
                await self._complete(job)
        finally:
            job.tasks.pop(piece.index, None)
            self._wake.set()

    def _finished_piece(self, job: _Running, piece: Piece, wav: np.ndarray) -> None:
        job.done.add(piece.index)
        job.samples[piece.index] = len(wav)
        job.recent.append((time.monotonic(), len(wav) / SAMPLE_RATE, len(piece.text)))
        self._advance_prefix(job, announce=True)

    def _advance_prefix(self, job: _Running, *, announce: bool) -> None:
        """Move the announced prefix over the pieces now contiguous, each announced with its place on the timeline."""
        view: Job | None = None
        while job.prefix < len(job.pieces) and job.prefix in job.done:
            piece = job.pieces[job.prefix]
            previous = job.pieces[job.prefix - 1] if job.prefix else None
            start = job.prefix_end + timeline.pause_before(previous, piece)
            end = start + job.samples[piece.index]
            job.prefix_end = end
            job.prefix += 1
            if announce:
                view = view or self.view(self.store.get(job.row.id) or job.row)
                event = JobPieceEvent(
                    job=view,
                    piece=JobPiece(
                        index=piece.index,
                        start=start / SAMPLE_RATE,
                        end=end / SAMPLE_RATE,
                        text=piece.text,
                        chapter=piece.chapter,
                    ),
                )
                self.events.publish(job.row.id, event.model_dump(mode="json"))

    # ------------------------------------------------------------------------------------ job's end
    async def _complete(self, job: _Running) -> None:
        self._running.pop(job.row.id, None)
        await asyncio.to_thread(self.store.set_state, job.row.id, "completed")
        self._announce_end(job.row.id, "job.completed")

    async def _fail(self, job: _Running, error: dict[str, Any]) -> None:
        self._running.pop(job.row.id, None)
        await self._cancel_pieces(job, keep=asyncio.current_task())
        await asyncio.to_thread(self.store.set_state, job.row.id, "failed", error=error)
        self._announce_end(job.row.id, "job.failed")

    def _fail_row(self, row: JobRow, error: dict[str, Any]) -> None:
        log.error("job %s cannot run: %s", row.id, error["message"])
        self.store.set_state(row.id, "failed", error=error)
        self._announce_end(row.id, "job.failed")

    def _announce_end(self, job_id: str, kind: str) -> None:
        row = self.store.get(job_id)
        if row is not None:
            self.events.publish(job_id, JobEndEvent(type=kind, job=self.view(row)).model_dump(mode="json"))  # type: ignore[arg-type]

    async def _cancel_pieces(self, job: _Running, keep: asyncio.Task[Any] | None = None) -> None:
        """Cancel the job's pieces in flight (aborting their T3 requests) and wait for them, and for any piece file
        being written."""
        tasks = [task for task in job.tasks.values() if task is not keep]
        job.todo.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*job.saves, return_exceptions=True)

    async def delete(self, job_id: str) -> bool:
        """Cancel the job if it runs, then remove its files and rows; False if there is no such job."""
        job = self._running.pop(job_id, None)
        row = await asyncio.to_thread(self.store.get, job_id)
        if job is not None:
            await self._cancel_pieces(job)
        if row is None:
            return False
        if row.state in ("queued", "running"):
            view = self.view(row).model_copy(update={"status": "cancelled", "finished_at": int(time.time())})
            self.events.publish(job_id, JobEndEvent(type="job.cancelled", job=view).model_dump(mode="json"))
        deleted = await asyncio.to_thread(self.store.delete, job_id)
        self._wake.set()
        return deleted

    # ------------------------------------------------------------------------------------------ view
    def view(self, row: JobRow) -> Job:
        """The Job object the API answers with."""
        request = row.request
        voice = request["voice"]
        return Job(
            id=row.id,
            created_at=row.created_at,
            finished_at=row.finished_at,
            status=row.state,  # type: ignore[arg-type]
            model=request["model"],
            voice=voice["id"] if isinstance(voice, dict) else voice,
            response_format=request.get("response_format", "mp3"),
            title=row.title,
            characters=row.characters,
            pieces_done=row.pieces_done,
            pieces_total=row.pieces_total,
            audio_seconds=round(row.audio_samples / SAMPLE_RATE, 3),
            eta_seconds=self.eta(row.id) if row.state in ("queued", "running") else None,
            chapters=[JobChapter(**c) for c in row.chapters],
            error=row.error,
        )
