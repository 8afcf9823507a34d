"""Voice management: list the voices, add a cloned one (multipart upload), delete one."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile

from ..auth import require_api_key
from ..errors import APIError
from ..limits import upload_too_large_message
from ..metrics import VOICES
from ..registry import ModelRegistry
from ..schemas import VoiceCreated, VoiceDeleted, VoiceEntry, VoiceList, error_responses
from ..voices import (
    Voice,
    VoiceExistsError,
    VoiceLibrary,
    VoiceNotFoundError,
    VoiceStorageError,
    VoiceUploadError,
)
from .common import registry_of, settings_of, voices_of

router = APIRouter()


@router.get("/v1/audio/voices", response_model=VoiceList, responses=error_responses(503))
async def list_voices(request: Request) -> VoiceList:
    """Every voice with its kind: builtin (`default`), openai (a name speaking with the built-in voice), language
    (the built-in voice in that language), custom (a clip: uploaded, dropped in, or speaking for a built-in name)."""
    return VoiceList(voices=[VoiceEntry(id=v.id, name=v.name, kind=v.kind) for v in voices_of(request).list()])


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise APIError(413, upload_too_large_message(limit), param="audio_sample", code="file_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/v1/audio/voices", dependencies=[Depends(require_api_key)], status_code=201, response_model=VoiceCreated,
    responses=error_responses(400, 401, 409, 413, 500, 503),
)  # fmt: skip
async def create_voice(
    request: Request,
    response: Response,
    name: str = Form(...),
    audio_sample: UploadFile = File(...),
    consent: str = Form(...),
) -> VoiceCreated:
    """Add a cloned voice: multipart `name`, `audio_sample` (wav/mp3/flac/ogg) and `consent` (the speaker agreed).
    Every loaded model analyses the clip before the answer, so the voice's first request is as fast as any; a model
    that cannot use it is named in X-Chatterbox-Warning. A name of OpenAI's voices (`alloy`) makes the clip speak
    for that name."""
    if consent.strip().lower() in ("", "0", "false", "no"):
        raise APIError(
            400, 'consent is required: send consent "yes" to confirm the speaker agreed to having their voice cloned',
            param="consent", code="consent_required",
        )  # fmt: skip
    library = voices_of(request)
    data = await _read_limited(audio_sample, settings_of(request).max_upload_bytes)
    try:
        voice = await asyncio.to_thread(library.add, name, data, audio_sample.filename)
    except VoiceUploadError as exc:
        status = 409 if isinstance(exc, VoiceExistsError) else 400
        raise APIError(status, str(exc), param=exc.param, code=exc.code) from exc
    except VoiceStorageError as exc:
        raise APIError(500, str(exc), code="voices_dir_unwritable") from exc
    _count_custom(library)
    unusable = await _prepare_voice(registry_of(request), voice)
    if unusable:
        response.headers["X-Chatterbox-Warning"] = "; ".join(unusable)
    return VoiceCreated(id=voice.id, name=voice.name)


async def _prepare_voice(models: ModelRegistry, voice: Voice) -> list[str]:
    """Each ready model analyses the new voice (at once: each on its own S3Gen thread); what the ones that cannot
    use it say. A model still loading analyses it on the voice's first request."""
    ready = models.loaded()
    reasons = await asyncio.gather(*(model.synthesizer.prepare_voice(voice) for model in ready))
    return [
        f"{model.id} cannot use voice {voice.id!r}: {reason}"
        for model, reason in zip(ready, reasons, strict=True)
        if reason
    ]


def _count_custom(library: VoiceLibrary) -> None:
    VOICES.set(sum(1 for v in library.list() if v.kind == "custom"))


@router.delete(
    "/v1/audio/voices/{voice_id}", dependencies=[Depends(require_api_key)], response_model=VoiceDeleted,
    responses=error_responses(400, 401, 404, 503),
)  # fmt: skip
async def delete_voice(voice_id: str, request: Request) -> VoiceDeleted:
    library = voices_of(request)
    try:
        await asyncio.to_thread(library.delete, voice_id)
    except VoiceNotFoundError as exc:
        raise APIError(404, f"voice {voice_id!r} does not exist", param="voice_id", code="voice_not_found") from exc
    except VoiceUploadError as exc:
        raise APIError(400, str(exc), param="voice_id", code=exc.code) from exc
    _count_custom(library)
    return VoiceDeleted(id=voice_id)
