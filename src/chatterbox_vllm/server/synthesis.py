"""One loaded model's synthesis pipeline (`Synthesizer`): text pieces -> T3 tokens (engine) -> S3Gen audio, as a
stream of float32 chunks. It owns the model's S3Gen worker (thread or process) and its voices' conditionals; it does
not own a request's HTTP side (its queue place, encoding, metrics, the response: `speech_job.py`).

* Everything that can fail on the request's content (language, text, voice clip) is checked in `prepare`, before
  the response starts, so such failures are 400s rather than broken streams.
* T3 runs in the engine (vLLM batches concurrent requests); S3Gen and voice-clip analysis run in one worker
  thread, off the event loop, which vocodes pieces of concurrent requests together (`s3gen_worker`). While piece
  i is vocoded, T3 already decodes the next pieces (`parallel_pieces`). With CHATTERBOX_S3GEN_LAYOUT=process the
  same batching runs in a worker process of its own (`s3gen_process`), and voice analysis on a thread here.
* A cloned voice is analysed when it is uploaded (`prepare_voice`) and its conditionals kept in memory and in the
  voices directory (`conditioning_store`), so its first request costs no more than the built-in voice's; a clip
  dropped in by hand is analysed on its first request.
* The first piece's audio leaves after `stream_first_audio_tokens` tokens (S3Gen on bounded windows of the tokens so
  far, batched with other requests' partials: `incremental`), so time to first audio does not wait for a whole
  sentence; while at most `stream_partials_max_active` requests are in progress.
* A bounded number of requests may be in progress; beyond it the API answers 429 (`admission.py`; the speech job
  takes and gives back the place, the synthesizer only reads how many are in progress).
* Cancelling the consumer (a client that hangs up) cancels the T3 request, which frees its KV cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio.io import AudioDecodeError
from ..conditioning import Conditionals
from ..conditioning_store import ConditioningStore
from ..engine.base import SamplingParams
from ..incremental import IncrementalVocoder, warm_up_first_partial
from ..placement import resolve_placement
from ..settings import Settings
from ..text.chunking import split_for_synthesis
from ..text.cleaning import remove_control_characters
from ..text.languages import SUPPORTED_LANGUAGES, UnsupportedLanguageError, validate_language
from ..text.paralinguistic import prepare_tags
from ..tts import SAMPLE_RATE, ChatterboxTTS, UnsupportedSettingError, VocodeJob
from .admission import Admission
from .errors import APIError, describe_failure, log_failure
from .job_gate import JobGate
from .metrics import (
    FIRST_AUDIO_STAGE,
    S3GEN_PROCESS_RESTARTS,
    S3GEN_WORKER_RESTARTS,
    STREAM_FIRST_AUDIO,
    VOICE_CONDITIONING,
)
from .playback_lead import PlaybackLead
from .registry import served_id
from .s3gen_beside import S3GenBeside
from .s3gen_pool import S3GenPool
from .s3gen_process import S3GenProcess
from .s3gen_worker import S3GenWorker
from .schemas import SpeechRequest
from .voices import Voice

PAUSE_SECONDS = 0.12  # silence between sentence pieces
PAUSE_SAMPLES = int(PAUSE_SECONDS * SAMPLE_RATE)
FADE_SECONDS = 0.005  # edges of each piece fade in/out: no clicks where pieces meet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobVoice:
    """What every piece of a long-form job is spoken with: the voice's conditionals, the sampling settings (their
    seed the job's) and the language; made when the job is submitted and again when it resumes."""

    conds: Conditionals
    params: SamplingParams
    language: str | None


@dataclass
class PreparedSpeech:
    pieces: list[torch.Tensor]  # text tokens per piece
    conds: Conditionals
    params: SamplingParams
    text_tokens: int
    removed_tags: tuple[str, ...] = ()  # paralinguistic tags dropped because the model does not speak them
    texts: tuple[str, ...] = ()  # each piece's text (for the stream's segment events)


def fade_out(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The last FADE_SECONDS ramp to zero (the end of a piece streamed in parts)."""
    n = min(int(FADE_SECONDS * sample_rate), len(wav))
    if n == 0:
        return wav
    wav = wav.copy()
    wav[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return wav


def fade_edges(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    n = min(int(FADE_SECONDS * sample_rate), len(wav) // 2)
    if n == 0:
        return wav
    wav = wav.copy()
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    wav[:n] *= ramp
    wav[-n:] *= ramp[::-1]
    return wav


def _multilingual_advice(language: str) -> str:
    return f"{SUPPORTED_LANGUAGES.get(language, language)} needs the multilingual model (CHATTERBOX_MODEL=multilingual)"


class Synthesizer:
    """One loaded model's synthesis for the API (one per model when the server loads several)."""

    def __init__(
        self,
        tts: ChatterboxTTS,
        settings: Settings,
        admission: Admission | None = None,
        store: ConditioningStore | None = None,
        language_advice: Callable[[str], str] | None = None,
        beside: S3GenBeside | None = None,
    ) -> None:
        """`store`: where this model's conditionals of the voices directory's clips are kept (None: memory only).
        `language_advice(code)` says which model speaks a language this one does not (the server's models know;
        alone, a synthesizer can only say that the multilingual model does). `beside`: the S3Gen process and voice
        warm-up started while T3's engine started (`s3gen_beside`), taken over here."""
        self.tts = tts
        self.settings = settings
        self.admission = admission or Admission(settings.max_queue)
        # Long-form jobs' pieces reach S3Gen only where speech requests leave it free (`job_gate.py`).
        self.job_gate = JobGate(self.admission, rows_beside=settings.job_rows_beside_requests,
                                max_defer_s=settings.job_max_defer_s)  # fmt: skip
        self.store = store
        self.model_id = served_id(tts.variant)
        self._language_advice = language_advice or _multilingual_advice
        self._max_batch = settings.limits().max_batch_size  # T3's batch: also the most pieces of one input at once
        rows = self._s3gen_rows = settings.s3gen_rows()  # pieces one S3Gen batch holds (the worker's batch)
        # Where S3Gen's workers run (CHATTERBOX_S3GEN_DEVICES; unset: one beside T3, on the model's device).
        self.placement = resolve_placement(settings, t3_device=tts.device)
        # auto: a worker process on a GPU with the high preset, where a checkpoint directory lets it load S3Gen again
        layout = settings.s3gen_layout_on(torch.device(tts.device).type)
        if layout == "process" and settings.s3gen_layout == "auto" and tts.vocoder_spec is None:
            layout = "thread"
        self._s3gen: S3GenWorker | S3GenProcess | S3GenPool
        if beside is not None:
            # Started before T3's engine, beside it: its warm-ups (and voice analysis's) may be done already.
            self._s3gen, voice_warm_up = beside.take()
            self._s3gen.use_call_worker(S3GenWorker(tts, 1))
            self._warm_ups = [self._s3gen.ready, voice_warm_up or self._s3gen.call(tts.voices.warm_up)]
        elif self.placement.workers > 1:
            log.info("%s: %s, each in a process of its own", self.model_id, self.placement.describe())
            self._s3gen = self._s3gen_pool()
            self._warm_ups = [self._s3gen.ready, self._s3gen.call(tts.voices.warm_up)]
        elif self.placement.s3gen_in_processes(layout):
            self._s3gen = self._s3gen_process(self.placement.s3gen_devices[0])
            # The child warms up S3Gen (graphs, first partial) before it says it is ready; voice analysis stays here.
            self._warm_ups = [self._s3gen.ready, self._s3gen.call(tts.voices.warm_up)]
        else:
            self._s3gen = S3GenWorker(tts, rows, low_rows_beside=settings.job_rows_beside_requests,
                                      max_pause_s=settings.job_max_defer_s)  # fmt: skip
            # S3Gen's CUDA graphs for every length, in the worker before any request's vocoding (GPU only; ~30 s).
            self._warm_ups = [self._s3gen.call(tts.warm_up_s3gen, settings.max_new_tokens)]
            # And the first partial's shapes (GPU only): a lone stream's first audio pays no first-call cost.
            self._warm_ups.append(self._s3gen.call(self._warm_up_first_partial))
            # Then voice analysis (once per model): its first run loads libraries for seconds, which no upload should
            # pay.
            self._warm_ups.append(self._s3gen.call(tts.voices.warm_up))
        # A job's S3Gen batch pauses between flow steps while speech requests are in progress (any model's: they
        # share the GPU).
        self.admission.watch(self._s3gen.note_requests)
        S3GEN_PROCESS_RESTARTS.labels(model=self.model_id)  # listed from 0 in /metrics, in either layout
        for device in dict.fromkeys(str(device) for device in self.placement.s3gen_devices):
            S3GEN_WORKER_RESTARTS.labels(model=self.model_id, device=device)

    def _s3gen_process(self, device: torch.device, call_worker: S3GenWorker | None = None) -> S3GenProcess:
        """S3Gen in a worker process of its own on `device` (CHATTERBOX_S3GEN_LAYOUT=process, or a worker placed
        off T3's device), loaded from the model's checkpoint directory; `call` work (voice analysis) on a thread of
        this process (`call_worker`; None: a new one)."""
        spec = self.tts.vocoder_spec
        if spec is None:
            raise ValueError(
                "S3Gen in worker processes (CHATTERBOX_S3GEN_LAYOUT=process, CHATTERBOX_S3GEN_DEVICES) needs a model "
                "loaded from a checkpoint directory (its S3Gen is loaded again in each worker process); this one was "
                "built in memory: use CHATTERBOX_S3GEN_LAYOUT=thread and leave CHATTERBOX_S3GEN_DEVICES unset"
            )
        return S3GenProcess.from_settings(spec, self.settings, device=str(device), model=self.model_id,
                                          call_worker=call_worker or S3GenWorker(self.tts, 1))  # fmt: skip

    def _s3gen_pool(self) -> S3GenPool:
        """One S3Gen worker process per placed worker, started side by side, behind a pool that routes each piece
        to the least-loaded one; voice analysis on one thread of this process."""
        calls = S3GenWorker(self.tts, 1)
        workers: list[S3GenProcess] = []
        try:
            for device in self.placement.s3gen_devices:
                workers.append(self._s3gen_process(device, calls))
        except BaseException:
            for worker in workers:
                worker.shutdown()
            calls.shutdown()
            raise
        return S3GenPool(workers, calls)

    def wait_warm_up(self) -> None:
        """Block until S3Gen's and voice analysis's warm-ups have run: before that, a request would queue behind
        them on the S3Gen thread (or in the S3Gen process), so the model is not ready yet. A warm-up that failed
        raises here. The S3Gen process's phases join the model's start-up phases (`s3gen_process_load`, ...)."""
        for future in self._warm_ups:
            result = future.result()
            if isinstance(self._s3gen, S3GenProcess | S3GenPool) and future is self._s3gen.ready:
                for name, seconds in result.items():
                    self.tts.startup_phases["s3gen_process_load" if name == "load_s3gen" else name] = seconds

    def s3gen_health(self) -> dict[str, object] | None:
        """S3Gen's worker processes for /health (layout, alive, restarts, and each worker's device, pid, restarts and
        pieces outstanding; one process: its pid too); None in the default thread layout, whose entry stays as it
        was."""
        if isinstance(self._s3gen, S3GenPool):
            return self._s3gen.health()
        if isinstance(self._s3gen, S3GenProcess):
            return {**self._s3gen.health(), "workers": [self._s3gen.worker_health()]}
        return None

    def _warm_up_first_partial(self) -> None:
        """Capture the first partial vocode's graphs for every batch size, and run it once, alone and in a batch,
        with the built-in voice (on the S3Gen thread, at start): its kernels chosen, its HiFT shapes seen, before any
        request. GPU only: on a CPU nothing is captured and the run would only delay start. A failure costs only this
        warm-up (logged), never the server."""
        try:
            warm_up_first_partial(self.tts, self.settings.stream_first_audio_tokens, self._s3gen_rows)
        except Exception as exc:  # noqa: BLE001 - the warm-up is an optimisation
            log.warning("warming up the first partial vocode failed (%s: %s); the first stream pays its first call",
                        type(exc).__name__, exc)  # fmt: skip

    # ---------------------------------------------------------------------------------------- admission
    @property
    def active(self) -> int:
        """Speech requests in progress on the whole server (every model's)."""
        return self.admission.active

    def _partial_wanted(self, lead: PlaybackLead, *, first_audio_sent: bool) -> bool:
        """Whether a stream's next partial vocode runs now. Each partial decodes the whole voice prompt again (most
        of its cost), so once a stream's first audio has left, later partials run only while few requests are in
        progress (`stream_later_partials_max_active`; under load the rest of the piece comes from its whole vocode,
        batched with other pieces: H200, 2026-12-02, every partial at 64 concurrent cut S3Gen's audio per busy
        second to ~17x, BENCHMARKS.md) and while the audio sent is less than `stream_partial_lead_s` ahead of its
        playback (`playback_lead.py`)."""
        if not self._few_active():
            return False
        if not first_audio_sent:
            return True
        return (self.active <= self.settings.stream_later_partials_max_active
                and lead.ahead_s() < self.settings.stream_partial_lead_s)  # fmt: skip

    def _few_active(self) -> bool:
        """Whether partial vocodes (first audio sooner, at some S3Gen time's cost) are wanted now: checked again
        before every partial, so a request that started among few stops making them when a burst arrives."""
        return self.active <= self.settings.stream_partials_max_active

    # ------------------------------------------------------------------------------------------ prepare
    def language_for(self, request: SpeechRequest, voice: Voice) -> str | None:
        """The language to speak (None for a model that speaks English only), or a 400 that says which model
        speaks the one asked for."""
        if not self.tts.family.multilingual:
            variant = self.tts.variant
            try:
                asked = validate_language(request.language_id, multilingual=True)
            except UnsupportedLanguageError as exc:
                raise APIError(
                    400, f"the {variant} model speaks English only; language_id must be omitted or 'en'",
                    param="language_id", code="unsupported_language",
                ) from exc  # fmt: skip
            if asked != "en":
                raise APIError(
                    400, f"the {variant} model speaks English only; language_id must be omitted or 'en'. "
                    f"{self._language_advice(asked)}", param="language_id", code="unsupported_language",
                )  # fmt: skip
            # a language voice is listed because another model speaks it
            if voice.kind == "language" and voice.language is not None and voice.language != "en":
                language = SUPPORTED_LANGUAGES[voice.language]
                raise APIError(
                    400, f"voice {voice.id!r} is the built-in voice speaking {language}, which the {variant} model "
                    f"does not speak. {self._language_advice(voice.language)}",
                    param="voice", code="unsupported_language",
                )  # fmt: skip
            return None
        language = request.language_id or voice.language or "en"
        try:
            return validate_language(language, multilingual=True)
        except ValueError as exc:
            raise APIError(400, str(exc), param="language_id", code="unsupported_language") from exc

    async def prepare(self, request: SpeechRequest, voice: Voice) -> PreparedSpeech:
        if len(request.input) > self.settings.max_input_chars:
            raise APIError(
                400,
                f"input is {len(request.input)} characters; the limit is {self.settings.max_input_chars}",
                param="input",
                code="string_above_max_length",
            )
        language = self.language_for(request, voice)
        # Tags the model does not speak are removed once, here: the response header names them (text_tokens would
        # otherwise remove them piece by piece).
        text, removed = prepare_tags(remove_control_characters(request.input), self.tts.variant)
        if removed and not text.strip():
            raise APIError(
                400, f"input holds nothing but paralinguistic tags ({' '.join(dict.fromkeys(removed))}), which the "
                f"{self.tts.variant} model does not speak", param="input", code="empty_input",
            )  # fmt: skip
        texts = split_for_synthesis(text, self.settings.chunk_chars)
        if not texts:
            raise APIError(
                400, "input has no text to speak (it is blank, or holds only control characters)",
                param="input", code="empty_input",
            )  # fmt: skip
        try:
            pieces = [self.tts.text_tokens(text, language) for text in texts]
        except ValueError as exc:
            raise APIError(400, str(exc), param="input", code="invalid_value") from exc
        conds = await self._conditionals(voice, request.exaggeration)
        params = self._sampling_params(request, request.seed)
        return PreparedSpeech(pieces, conds, params, sum(int(p.numel()) for p in pieces), tuple(removed), tuple(texts))

    def _sampling_params(self, request: SpeechRequest, seed: int | None) -> SamplingParams:
        try:
            return self.tts.sampling_params(
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                min_p=request.min_p,
                repetition_penalty=request.repetition_penalty,
                cfg_weight=request.cfg_weight,
                max_new_tokens=self.settings.max_new_tokens,
                seed=seed,
            )
        except UnsupportedSettingError as exc:
            raise APIError(400, str(exc), param=exc.param, code="unsupported_parameter") from exc
        except ValueError as exc:
            raise APIError(400, str(exc), code="invalid_value") from exc

    # ------------------------------------------------------------------------------- long-form jobs
    def job_text(self, text: str) -> str:
        """A job's text as pieces are cut from it: control characters gone, tags the model does not speak removed."""
        return prepare_tags(remove_control_characters(text), self.tts.variant)[0]

    async def prepare_job(self, request: SpeechRequest, voice: Voice, texts: list[str], seed: int) -> JobVoice:
        """A long-form job's voice and settings, checked as `prepare` checks a speech request (language, voice,
        sampling; every piece's text tokenized once, off the loop), so a job that is accepted can be spoken. `texts`:
        the job's pieces (none when a stored job resumes: they were checked at submit)."""
        language = self.language_for(request, voice)

        def check() -> None:
            for text in texts:
                self.tts.text_tokens(text, language)

        try:
            await asyncio.to_thread(check)
        except ValueError as exc:
            raise APIError(400, str(exc), param="input", code="invalid_value") from exc
        conds = await self._conditionals(voice, request.exaggeration)
        return JobVoice(conds, self._sampling_params(request, seed), language)

    async def speak_piece(self, text: str, voice: JobVoice, seed: int) -> np.ndarray:
        """One piece of a long-form job (float32, 24 kHz, edges faded): T3 for its tokens, then S3Gen at low priority
        (`job_gate`: not while speech requests are in progress; interactive pieces waiting in S3Gen go first).
        Cancelling the caller aborts the T3 request, or takes the piece out of S3Gen's queue."""
        tokens = self.tts.text_tokens(text, voice.language)
        params = self.tts.piece_params(tokens, voice.params)
        params = SamplingParams(**{**params.__dict__, "seed": seed})
        speech = await self.tts.engine.generate_async(tokens.to(self.tts.device), voice.conds.t3, params)
        async with self.job_gate.entered():
            future = self._s3gen.vocode(VocodeJob(speech, voice.conds, seed), low_priority=True)
            wav = await asyncio.wrap_future(future)  # cancelled with the caller: out of S3Gen's queue if not started
        return fade_edges(wav)

    async def _conditionals(self, voice: Voice, exaggeration: float) -> Conditionals:
        if voice.path is None:
            if self.tts.default_conds is None:
                raise APIError(
                    400, "this checkpoint has no built-in voice; use an uploaded voice (GET /v1/audio/voices)",
                    param="voice", code="voice_not_found",
                )  # fmt: skip
            return self.tts.default_conds.with_exaggeration(exaggeration)
        try:
            conds = await asyncio.to_thread(self.clip_conditionals, voice.path)
        except AudioDecodeError as exc:  # its words name the server's files: for the log only
            log_failure(f"voice {voice.id!r} cannot be used", exc)
            raise APIError(
                400, f"voice {voice.id!r}: its clip in the voices directory cannot be read (the server log says why); "
                "upload the voice again", param="voice", code="invalid_voice",
            ) from exc  # fmt: skip
        except ValueError as exc:
            raise APIError(400, f"voice {voice.id!r}: {exc}", param="voice", code="invalid_voice") from exc
        return conds.with_exaggeration(exaggeration)

    def clip_conditionals(self, clip: Path, *, persist: bool = False) -> Conditionals:
        """A voice clip's conditionals from memory or the store, else analysed on the S3Gen thread (which runs the
        networks it uses) and stored; counted by where they came from. Blocks: call it from a worker thread."""
        conds, source = self.tts.voices.for_clip(clip, self.store, persist=persist, compute=self._analyse)
        VOICE_CONDITIONING.labels(model=self.model_id, source=source).inc()
        return conds

    def _analyse(self, data: bytes) -> Conditionals:
        return self._s3gen.call(self.tts.voices.compute, data).result()

    async def prepare_voice(self, voice: Voice) -> str | None:
        """Analyse a newly uploaded voice for this model and store the result, so its first request is as fast as
        any other. Returns why this model cannot use the voice (too short for Turbo, say), or None."""
        if voice.path is None:
            return None
        try:
            await asyncio.to_thread(self.clip_conditionals, voice.path, persist=True)
        except ValueError as exc:
            return str(exc)
        except Exception as exc:  # the voice is stored; its analysis is tried again on its first request
            log.error("analysing voice %r for %s failed: %s", voice.id, self.model_id, describe_failure(exc))
            return f"its analysis failed ({type(exc).__name__}); it is tried again on the voice's first request"
        return None

    # --------------------------------------------------------------------------------------- synthesis
    async def _tokens(self, text: torch.Tensor, prepared: PreparedSpeech, params: SamplingParams) -> list[int]:
        # all at once: one wake-up of this loop per piece, not per token
        return await self.tts.engine.generate_async(text.to(self.tts.device), prepared.conds.t3, params)

    async def stream(
        self, prepared: PreparedSpeech, usage: dict[str, int], on_piece_end: Callable[[int], None] | None = None
    ) -> AsyncIterator[np.ndarray]:
        """Audio of each piece as soon as it is made (float32, 24 kHz); `usage` counts tokens as they go.
        `on_piece_end(i)` is called once the consumer has taken piece i's last audio, before the pause after it
        (so a consumer counting samples knows where the piece ends; each pause is PAUSE_SECONDS long).

        With vLLM, up to `parallel_pieces` pieces decode at once (a long input finishes in about the time of its
        longest piece, not the sum) and the first piece's audio leaves while T3 still writes it. Every piece is
        scheduled at once; a semaphore holds T3 to `parallel_pieces` of them, so the next piece starts the moment
        any piece's tokens are done, not when the pieces before it have been delivered. Pieces take T3 slots in
        order (the first one before any other), and their audio leaves in order.
        """
        usage["input_tokens"] = prepared.text_tokens
        usage["output_tokens"] = 0
        concurrent_engine = self.tts.engine.concurrent
        window = min(self.settings.parallel_pieces, self._max_batch) if concurrent_engine else 1
        # Partial vocodes cost S3Gen time (the one worker is shared): only up to `stream_partials_max_active`.
        incremental = concurrent_engine and self.settings.stream_first_audio_tokens > 0 and self._few_active()
        count = len(prepared.pieces)

        def params_for(index: int) -> SamplingParams:
            params = self.tts.piece_params(prepared.pieces[index], prepared.params)
            seed = params.seed
            if seed is None or index == 0:
                return params
            return SamplingParams(**{**params.__dict__, "seed": seed + index})

        futures: dict[int, asyncio.Future[tuple[int, np.ndarray]]] = {}
        t3_slots = asyncio.Semaphore(window)

        async def piece_audio(index: int) -> tuple[int, np.ndarray]:
            """T3 then S3Gen for one piece: pieces whose tokens are ready together reach the S3Gen worker
            together, so it vocodes them as one batch (and with other requests' pieces)."""
            params = params_for(index)
            async with t3_slots:
                tokens = await self._tokens(prepared.pieces[index], prepared, params)
            wav = await asyncio.wrap_future(self._s3gen.vocode(VocodeJob(tokens, prepared.conds, params.seed)))
            return len(tokens), wav

        try:
            first_slot_held = False
            if incremental:  # the first piece is decoded inline below; its slot is taken before any other piece's
                await t3_slots.acquire()
                first_slot_held = True
            for index in range(1 if incremental else 0, count):
                futures[index] = asyncio.ensure_future(piece_audio(index))
            for index in range(count):
                if index > 0:
                    if on_piece_end is not None:
                        on_piece_end(index - 1)
                    yield np.zeros(PAUSE_SAMPLES, dtype=np.float32)
                if index == 0 and not incremental and concurrent_engine:
                    STREAM_FIRST_AUDIO.labels(model=self.model_id, source="piece").inc()
                if index == 0 and incremental:
                    first_slot_held = False  # handed over: released as soon as the first piece's tokens are done
                    first_piece = self._first_piece_incrementally(prepared, params_for(0), usage, t3_slots)
                    async with contextlib.aclosing(first_piece):  # a client gone mid-piece aborts its T3 now
                        async for audio in first_piece:
                            yield audio
                    continue
                token_count, wav = await futures.pop(index)
                usage["output_tokens"] += token_count
                yield fade_edges(wav)
            if on_piece_end is not None and count:
                on_piece_end(count - 1)
        finally:
            if first_slot_held:
                t3_slots.release()
            pending = [future for future in futures.values() if not future.done()]
            for future in pending:  # all at once: each cancel aborts a T3 request, and they need not queue
                future.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*pending, return_exceptions=True)
            for future in futures.values():
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: the request's own failure is reported once, not per piece

    async def _first_piece_incrementally(
        self, prepared: PreparedSpeech, params: SamplingParams, usage: dict[str, int], t3_slot: asyncio.Semaphore
    ) -> AsyncGenerator[np.ndarray, None]:
        """The first piece's audio in growing parts while its tokens arrive (see `incremental`). Comes holding one
        of `t3_slot`'s places and gives it back when T3 is done with the piece (or the request ends)."""
        vocoder = IncrementalVocoder(
            self.tts,
            prepared.conds,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            first_tokens=self.settings.stream_first_audio_tokens,
        )
        text = prepared.pieces[0].to(self.tts.device)
        tokens: list[int] = []
        first_source = "piece"
        lead = PlaybackLead()
        began = time.perf_counter()
        try:
            async for token in self.tts.engine.stream_async(text, prepared.conds.t3, params):
                tokens.append(token)
                if vocoder.due(len(tokens)) and self._partial_wanted(lead, first_audio_sent=first_source == "partial"):
                    job = vocoder.partial_job(tokens)
                    if job is None:
                        continue
                    submitted = time.perf_counter()
                    # cancelled with this coroutine (a client gone): the worker then skips it
                    result = await asyncio.wrap_future(self._s3gen.partial(job))
                    if first_source == "piece":  # this request's first partial: its stages of first audio
                        FIRST_AUDIO_STAGE.labels(stage="t3").observe(submitted - began)
                        FIRST_AUDIO_STAGE.labels(stage="s3gen").observe(time.perf_counter() - submitted)
                    audio = vocoder.take_partial(job, result)
                    lead.sent(len(audio) / SAMPLE_RATE)
                    if len(audio):
                        if first_source == "piece":
                            first_source = "partial"
                            STREAM_FIRST_AUDIO.labels(model=self.model_id, source="partial").inc()
                        yield audio
        finally:
            t3_slot.release()
        if first_source == "piece":
            STREAM_FIRST_AUDIO.labels(model=self.model_id, source="piece").inc()
        usage["output_tokens"] += len(tokens)
        # The whole piece: a batch job like every other piece's, so it is vocoded together with those ready with it
        # (the other pieces of a long input finish their tokens at about the same time).
        whole = vocoder.job(tokens)
        if whole is None:
            yield fade_out(vocoder.flush())
            return
        wav = await asyncio.wrap_future(self._s3gen.vocode(whole))
        yield fade_out(vocoder.take(whole, wav, final=True))

    def close(self) -> None:
        self._s3gen.shutdown()
