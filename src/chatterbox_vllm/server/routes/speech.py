"""POST /v1/audio/speech: OpenAI's speech endpoint. The route parses the body; a `SpeechJob` does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ..auth import require_api_key
from ..schemas import SpeechRequest, error_responses
from ..speech_job import SpeechJob
from .common import registry_of

router = APIRouter()


@router.post("/v1/audio/speech", dependencies=[Depends(require_api_key)],
             responses=error_responses(400, 401, 429, 500, 503))  # fmt: skip
async def create_speech(body: SpeechRequest, request: Request) -> StreamingResponse:
    """The input spoken in the voice asked for: encoded audio as it is made, or OpenAI's SSE events."""
    job = await SpeechJob.start(body, registry_of(request))
    return await job.response()
