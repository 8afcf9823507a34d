"""HTTP routes: OpenAI's speech and model endpoints, voice management, health and metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import torch
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..checkpoint.hub import RANDOM_MODELS
from ..text.languages import SUPPORTED_LANGUAGES
from ..tts import SAMPLE_RATE
from .audio import CONTENT_TYPES, AudioEncoder
from .auth import require_api_key
from .errors import APIError, error_body, log_failure
from .limits import upload_too_large_message
from .metrics import AUDIO_SECONDS, FIRST_AUDIO, IN_PROGRESS, REQUEST_SECONDS, REQUESTS, VOICES
from .schemas import SpeechRequest
from .service import PreparedSpeech, SpeechService
from .startup import current_stage
from .state import ModelState, ServedModels, served_id
from .voices import (
    UnknownVoiceError,
    Voice,
    VoiceExistsError,
    VoiceLibrary,
    VoiceNotFoundError,
    VoiceStorageError,
    VoiceUploadError,
)

log = logging.getLogger(__name__)
router = APIRouter()
CREATED = 1_732_406_400  # a fixed "created" timestamp for the model list
STATIC_DIR = Path(__file__).with_name("static")  # the web page's files (package data)
# The page loads only its own files and talks only to this server; blob: is the audio it makes.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def _models(request: Request) -> ServedModels:
    return request.app.state.models


def _voices(request: Request) -> VoiceLibrary:
    """The voices (one library for every model), once the default model serves."""
    state = _models(request).default
    state.require_ready()
    return state.voices


# ----------------------------------------------------------------------------------------------- speech
@router.post("/v1/audio/speech", dependencies=[Depends(require_api_key)])
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    served = _models(request)
    state = served.for_request(body.model)
    state.require_ready()
    try:
        voice = state.voices.resolve(body.voice_id)
    except UnknownVoiceError as exc:
        if exc.language not in (None, "en"):  # a language code: known to the multilingual model alone
            raise APIError(
                400, f"voice {body.voice_id!r} is the built-in voice speaking {SUPPORTED_LANGUAGES[exc.language]}, "
                f"which no model loaded here speaks. {served.language_advice(exc.language)}",
                param="voice", code="unsupported_language",
            ) from exc  # fmt: skip
        raise APIError(400, str(exc), param="voice", code="voice_not_found") from exc
    service = state.service
    service.acquire()
    started = time.perf_counter()
    try:
        prepared = await service.prepare(body, voice)
        encoder = AudioEncoder(body.response_format, SAMPLE_RATE, body.speed)
    except BaseException:
        service.release()
        REQUESTS.labels(model=state.id, status="rejected").inc()
        raise
    IN_PROGRESS.inc()
    headers = {"X-Chatterbox-Model": state.id, **_notices(prepared)}  # which model spoke (aliases name none)
    if body.stream_format == "sse":
        content = _sse_events(service, prepared, encoder, started)
        return StreamingResponse(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers}
        )
    content = await _started(_audio_bytes(service, prepared, encoder, started))
    return StreamingResponse(content, media_type=CONTENT_TYPES[body.response_format], headers=headers)


def _notices(prepared: PreparedSpeech) -> dict[str, str]:
    """What the client should know about how its input was read (a header: the audio itself is unaffected)."""
    if not prepared.removed_tags:
        return {}
    tags = " ".join(dict.fromkeys(prepared.removed_tags))
    return {"X-Chatterbox-Warning": f"removed paralinguistic tags the served model does not speak: {tags}"}


async def _started(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream with its first chunk already made: a failure before any audio is then an error response
    (500, OpenAI's shape) rather than a 200 whose body breaks off. Later failures can only cut the stream."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    except Exception as exc:
        raise APIError(500, "speech synthesis failed; the server log says why", code="synthesis_failed") from exc

    async def resumed() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for data in chunks:
            yield data

    return resumed()


async def _encoded_chunks(
    service: SpeechService, prepared: PreparedSpeech, encoder: AudioEncoder, started: float, usage: dict[str, int]
) -> AsyncIterator[bytes]:
    """Encoded audio as it is made; owns the request's queue place and its metrics."""
    status, first = "ok", True
    model = served_id(service.tts.variant)
    try:
        async for wav in service.stream(prepared, usage):
            AUDIO_SECONDS.labels(model=model).inc(len(wav) / SAMPLE_RATE)
            data = await asyncio.to_thread(encoder.encode, np.asarray(wav, dtype=np.float32))
            if data:
                if first:
                    FIRST_AUDIO.observe(time.perf_counter() - started)
                    first = False
                yield data
        tail = await asyncio.to_thread(encoder.finish)
        if tail:
            yield tail
    except asyncio.CancelledError:
        status = "cancelled"  # the client went away; the T3 request was aborted with this task
        raise
    except Exception as exc:
        status = "error"
        log_failure("speech synthesis failed", exc)
        raise
    finally:
        encoder.close()
        service.release()
        IN_PROGRESS.dec()
        REQUESTS.labels(model=model, status=status).inc()
        REQUEST_SECONDS.observe(time.perf_counter() - started)


async def _audio_bytes(
    service: SpeechService, prepared: PreparedSpeech, encoder: AudioEncoder, started: float
) -> AsyncIterator[bytes]:
    async for data in _encoded_chunks(service, prepared, encoder, started, {}):
        yield data


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _sse_events(
    service: SpeechService, prepared: PreparedSpeech, encoder: AudioEncoder, started: float
) -> AsyncIterator[str]:
    """OpenAI's speech SSE: `speech.audio.delta` events with base64 audio, then `speech.audio.done` with usage."""
    usage: dict[str, int] = {}
    try:
        async for data in _encoded_chunks(service, prepared, encoder, started, usage):
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except Exception:  # headers are sent: report in-band rather than cutting the stream silently
        failure = error_body(500, "speech synthesis failed", None, "synthesis_failed")
        yield _event({"type": "error", **failure})
        return
    total = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
    yield _event({"type": "speech.audio.done", "usage": {**usage, "total_tokens": total}})


# ----------------------------------------------------------------------------------------------- models
@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """The names a speech request may use: OpenAI's and `chatterbox` (the default model), then each loaded model."""
    return {"object": "list", "data": [_model_card(m) for m in _models(request).ids()]}


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "chatterbox-vllm"}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request) -> dict:
    _models(request).for_request(model_id, status=404)
    return _model_card(model_id)


@router.get("/v1/audio/models")
async def list_audio_models(request: Request) -> dict:
    return {"models": [{"id": m, "name": m} for m in _models(request).ids()]}


# ----------------------------------------------------------------------------------------------- voices
@router.get("/v1/audio/voices")
async def list_voices(request: Request) -> dict:
    """Every voice with its kind: builtin (`default`), openai (a name speaking with the built-in voice), language
    (the built-in voice in that language), custom (a clip: uploaded, dropped in, or speaking for a built-in name)."""
    return {"voices": [{"id": v.id, "name": v.name, "kind": v.kind} for v in _voices(request).list()]}


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise APIError(413, upload_too_large_message(limit), param="audio_sample", code="file_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/audio/voices", dependencies=[Depends(require_api_key)], status_code=201)
async def create_voice(
    request: Request,
    name: str = Form(...),
    audio_sample: UploadFile = File(...),
    consent: str = Form(...),
) -> JSONResponse:
    """Add a cloned voice: multipart `name`, `audio_sample` (wav/mp3/flac/ogg) and `consent` (the speaker agreed).
    Every loaded model analyses the clip before the answer, so the voice's first request is as fast as any; a model
    that cannot use it is named in X-Chatterbox-Warning. A name of OpenAI's voices (`alloy`) makes the clip speak
    for that name."""
    if consent.strip().lower() in ("", "0", "false", "no"):
        raise APIError(
            400, 'consent is required: send consent "yes" to confirm the speaker agreed to having their voice cloned',
            param="consent", code="consent_required",
        )  # fmt: skip
    library = _voices(request)
    data = await _read_limited(audio_sample, request.app.state.settings.max_upload_bytes)
    try:
        voice = await asyncio.to_thread(library.add, name, data, audio_sample.filename)
    except VoiceUploadError as exc:
        status = 409 if isinstance(exc, VoiceExistsError) else 400
        raise APIError(status, str(exc), param=exc.param, code=exc.code) from exc
    except VoiceStorageError as exc:
        raise APIError(500, str(exc), code="voices_dir_unwritable") from exc
    VOICES.set(sum(1 for v in library.list() if v.kind == "custom"))
    unusable = await _prepare_voice(_models(request), voice)
    headers = {"X-Chatterbox-Warning": "; ".join(unusable)} if unusable else None
    return JSONResponse({"id": voice.id, "name": voice.name}, status_code=201, headers=headers)


async def _prepare_voice(served: ServedModels, voice: Voice) -> list[str]:
    """Each ready model analyses the new voice (at once: each on its own S3Gen thread); what the ones that cannot
    use it say. A model still loading analyses it on the voice's first request."""
    ready = [state for state in served.states if state.status == "ready" and state.service is not None]
    reasons = await asyncio.gather(*(state.service.prepare_voice(voice) for state in ready))
    return [f"{state.id} cannot use voice {voice.id!r}: {reason}" for state, reason in zip(ready, reasons) if reason]


@router.delete("/v1/audio/voices/{voice_id}", dependencies=[Depends(require_api_key)])
async def delete_voice(voice_id: str, request: Request) -> dict:
    library = _voices(request)
    try:
        await asyncio.to_thread(library.delete, voice_id)
    except VoiceNotFoundError as exc:
        raise APIError(404, f"voice {voice_id!r} does not exist", param="voice_id", code="voice_not_found") from exc
    except VoiceUploadError as exc:
        raise APIError(400, str(exc), param="voice_id", code=exc.code) from exc
    VOICES.set(sum(1 for v in library.list() if v.kind == "custom"))
    return {"id": voice_id, "deleted": True}


@router.get("/v1/audio/languages")
async def list_languages(request: Request, model: str | None = None) -> dict:
    """The languages a model speaks (`?model=`, default the default model; English alone but for the multilingual
    model), and the input limit. Open without a key, like the other listings."""
    state = _models(request).for_request(model) if model else _models(request).default
    state.require_ready()
    assert state.family is not None  # a ready model's variant is known
    codes = state.family.languages
    return {
        "languages": [{"code": code, "name": name} for code, name in codes.items()],
        "max_input_chars": request.app.state.settings.max_input_chars,
    }


# ---------------------------------------------------------------------------------------------- web page
@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    """The page to try voices (static/index.html); its scripts and styles are served under /static/."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> RedirectResponse:
    """Browsers and other tools ask for /favicon.ico whatever the page links: the page's SVG icon."""
    return RedirectResponse("/static/favicon.svg", status_code=308, headers={"Cache-Control": "max-age=86400"})


# ------------------------------------------------------------------------------------------- operations
@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 once every model serves; 503 while one loads (`"status": "loading"`, with `loading`: the model loading now
    and its stage) or after one failed (`"error"`). The top level describes the default model (as with one model);
    `models` has every model's state (and its `stage` while it loads)."""
    served = _models(request)
    settings = request.app.state.settings
    state = served.default
    models = [_model_health(s) for s in served.states]
    if served.status != "ready":
        body = {"status": served.status, "model": settings.model, "models": models}
        stage = current_stage(served)
        if stage is not None:
            body["loading"] = stage
        if state.error or served.status == "error":
            body["error"] = state.error or next(s.error for s in served.states if s.error)
        return JSONResponse(body, status_code=503)
    tts = state.tts
    device = tts.device
    body = {
        "status": "ok",
        "model": settings.model,
        "variant": tts.variant,
        "engine": tts.engine.name,
        "device": str(device),
        "speech_requests_in_progress": state.service.active,
        "models": models,
    }
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        body["vram"] = {"used_gib": round((total - free) / 2**30, 2), "total_gib": round(total / 2**30, 2)}
    return JSONResponse(body)


def _model_health(state: ModelState) -> dict:
    """One model in /health: its name for requests, what loaded it, and how it is."""
    entry: dict = {"id": state.id, "model": state.model, "variant": state.variant, "status": state.status}
    if state.stage is not None:
        entry["stage"] = state.stage
    if state.tts is not None:
        entry["engine"] = state.tts.engine.name
    if state.model in RANDOM_MODELS:
        entry["random_weights"] = True  # a random-tiny checkpoint: the audio is noise (the web page says so)
    if state.t3_budget_gib is not None:
        entry["t3_gpu_memory_gib"] = state.t3_budget_gib
    if state.ready_after_s is not None:  # how its start went (benchmarks/startup.py reads these)
        entry["ready_after_s"] = round(state.ready_after_s, 2)
    if state.tts is not None:
        # What the start spent where; S3Gen's graphs and voice analysis warm up on S3Gen's thread before the model
        # is marked ready (a request would otherwise queue behind them), voice_warm_up last.
        phases = dict(state.tts.startup_phases)
        if state.tts.voices.warm_up_seconds is not None:
            phases["voice_warm_up"] = state.tts.voices.warm_up_seconds
        entry["startup_phases_s"] = {name: round(seconds, 2) for name, seconds in phases.items()}
    s3gen = state.service.s3gen_health() if state.service is not None else None
    if s3gen is not None:  # CHATTERBOX_S3GEN_LAYOUT=process: the worker process's pid, whether alive, its restarts
        entry["s3gen"] = s3gen
    if state.error:
        entry["error"] = state.error
    return entry


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
