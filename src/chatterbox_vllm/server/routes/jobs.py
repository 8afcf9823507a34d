"""Long-form speech jobs (JOBS_API.md): submit (JSON or a file), list, get, follow (SSE), download the audio, a
piece or the subtitles, delete. The routes translate HTTP; submitting is `jobs.submit`, the work `jobs.runner`.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import soundfile as sf
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from ...jobs import timeline
from ...jobs.documents import DocumentError, parse_text, parse_upload
from ...jobs.events import TERMINAL_EVENTS
from ...jobs.export import write_audio
from ...jobs.service import JobService
from ...jobs.store import FINISHED, JobRow
from ...jobs.submit import submit
from ...jobs.subtitles import to_srt, to_webvtt
from ..auth import require_api_key
from ..errors import APIError
from ..schemas import (
    Job,
    JobDeleted,
    JobEndEvent,
    JobFormat,
    JobList,
    JobRequest,
    JobSnapshotEvent,
    error_responses,
)
from ..validation import JOB_RULES, describe_validation
from .common import registry_of, settings_of

router = APIRouter(dependencies=[Depends(require_api_key)])

JOBS = "/v1/audio/speech/jobs"
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "m4b": "audio/mp4",
}
KEEPALIVE_S = 15.0  # an SSE comment this often while a job waits: proxies keep the stream open


def _service(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


async def _row(service: JobService, job_id: str) -> JobRow:
    row = await asyncio.to_thread(service.store.get, job_id)
    if row is None:
        raise APIError(404, f"job {job_id!r} does not exist", param="job_id", code="job_not_found")
    return row


def _openapi_body() -> dict[str, Any]:
    """The request body's two forms for the OpenAPI schema (the route parses the body itself)."""
    schema = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    form = {k: v for k, v in schema["properties"].items() if k != "input"}
    form["file"] = {"type": "string", "format": "binary", "description": ".txt, .md/.markdown or .epub"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": form, "required": ["file", "model", "voice"]}
                },
            },
        }
    }


@router.post(
    JOBS,
    status_code=202,
    response_model=Job,
    openapi_extra=_openapi_body(),
    responses=error_responses(400, 401, 404, 413, 415, 429, 503),
)
async def create_job(request: Request) -> Job:
    """A long-form job, accepted at once (202, status "queued"): JSON with `input`, or a multipart form with a
    `file` (.txt, .md, .epub) and the same fields as form fields."""
    service = _service(request)
    settings = settings_of(request)
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        body, document = await _from_form(request, settings.job_max_upload_bytes, settings.job_max_input_chars)
    else:
        raw_body = await request.body()
        body = _validated(lambda: JobRequest.model_validate_json(raw_body or b"null"))
        if len(body.input) > settings.job_max_input_chars:
            raise APIError(
                400,
                f"input is {len(body.input)} characters; the limit for a job is {settings.job_max_input_chars} "
                "(CHATTERBOX_JOB_MAX_INPUT_CHARS)",
                param="input",
                code="string_above_max_length",
            )
        try:
            document = await asyncio.to_thread(
                parse_text, body.input, markdown=body.input_format == "markdown", title=body.title
            )
        except DocumentError as exc:
            raise APIError(exc.status, exc.message, param="input", code=exc.code) from exc
    row = await submit(
        body, document, models=registry_of(request), store=service.store, runner=service.runner, settings=settings
    )
    return service.runner.view(row)


def _validated(parse: Any) -> JobRequest:
    """`parse()`, its validation errors answered as the API answers any invalid body (400), in a job's terms."""
    try:
        body: JobRequest = parse()
    except ValidationError as exc:
        message, param, code = describe_validation([dict(e) for e in exc.errors()], JOB_RULES)
        raise APIError(400, message, param=param, code=code) from exc
    return body


async def _from_form(request: Request, max_bytes: int, max_chars: int) -> tuple[JobRequest, Any]:
    form = await request.form(max_files=1, max_fields=64)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(
            400,
            "a multipart job needs its text as `file` (.txt, .md or .epub)",
            param="file",
            code="missing_required_parameter",
        )
    fields = {key: value for key, value in form.multi_items() if key != "file" and isinstance(value, str)}
    body = _validated(lambda: JobRequest.model_validate({**fields, "input": "-"}))
    data = await _read_limited(upload, max_bytes)
    try:
        document = await asyncio.to_thread(parse_upload, upload.filename or "", data, max_chars=max_chars)
    except DocumentError as exc:
        raise APIError(exc.status, exc.message, param="file", code=exc.code) from exc
    if body.title:
        document = type(document)(title=body.title, sections=document.sections)
    return body, document


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload, read no further than `limit` bytes (413 past it, whatever Content-Length said)."""
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise APIError(
                413,
                f"the file is larger than {limit} bytes, the server's limit for a job "
                "(CHATTERBOX_JOB_MAX_UPLOAD_BYTES)",
                param="file",
                code="file_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.get(JOBS, response_model=JobList, responses=error_responses(401, 503))
async def list_jobs(request: Request) -> JobList:
    """Every stored job, newest first."""
    service = _service(request)
    rows = await asyncio.to_thread(service.store.list_jobs)
    return JobList(data=[service.runner.view(row) for row in rows])


@router.get(JOBS + "/{job_id}", response_model=Job, responses=error_responses(401, 404, 503))
async def get_job(job_id: str, request: Request) -> Job:
    service = _service(request)
    return service.runner.view(await _row(service, job_id))


@router.delete(JOBS + "/{job_id}", response_model=JobDeleted, responses=error_responses(401, 404, 503))
async def delete_job(job_id: str, request: Request) -> JobDeleted:
    """Cancel the job if it runs, and remove its audio and its record."""
    service = _service(request)
    if not await service.runner.delete(job_id):
        raise APIError(404, f"job {job_id!r} does not exist", param="job_id", code="job_not_found")
    return JobDeleted(id=job_id)


@router.get(
    JOBS + "/{job_id}/events",
    responses={
        **error_responses(401, 404, 503),
        200: {"content": {"text/event-stream": {}}, "description": "job.snapshot, job.piece..., then the end"},
    },
)
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: the job now, each finished piece, then job.completed, job.failed or job.cancelled."""
    service = _service(request)
    queue = service.events.subscribe(job_id)  # before the snapshot: nothing is missed in between
    try:
        row = await _row(service, job_id)
    except BaseException:
        service.events.unsubscribe(job_id, queue)
        raise
    runner = service.runner

    async def stream() -> AsyncIterator[str]:
        try:
            yield _sse(JobSnapshotEvent(job=runner.view(row)).model_dump(mode="json"))
            if row.state in FINISHED:
                kind: Any = f"job.{row.state}"
                yield _sse(JobEndEvent(type=kind, job=runner.view(row)).model_dump(mode="json"))
                return
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield _sse(event)
                if event["type"] in TERMINAL_EVENTS:
                    return
        finally:
            service.events.unsubscribe(job_id, queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


def _filename(row: JobRow, ext: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", row.title or "").strip(" ._") or row.id
    return f"{stem[:120]}.{ext}"


def _disposition(row: JobRow, ext: str) -> str:
    """`attachment; filename="<title or id>.<ext>"` (ASCII), and the title as written in `filename*` (RFC 6266)
    when it needed changes to be plain ASCII."""
    plain = _filename(row, ext)
    header = f'attachment; filename="{plain}"'
    if row.title and plain != f"{row.title}.{ext}":
        header += f"; filename*=UTF-8''{quote(row.title.strip()[:200] + '.' + ext, safe='')}"
    return header


@router.get(
    JOBS + "/{job_id}/audio",
    responses={
        **error_responses(400, 401, 404, 409, 503),
        200: {"content": {t: {} for t in CONTENT_TYPES.values()}, "description": "the job's audio"},
    },
)
async def job_audio(job_id: str, request: Request, format: JobFormat | None = None) -> FileResponse:
    """The job's audio in its format (or `format`): whole when completed; else the pieces done so far, with
    X-Chatterbox-Job-Complete: false."""
    service = _service(request)
    row = await _row(service, job_id)
    fmt = format or row.request.get("response_format", "mp3")
    store = service.store
    pieces = await asyncio.to_thread(store.done_prefix, job_id)
    if not pieces:
        raise APIError(409, f"job {job_id!r} has no finished piece yet; its audio starts with the first "
                       "(GET .../events says when)", param="job_id", code="audio_not_ready")  # fmt: skip
    complete = row.state == "completed" and len(pieces) == row.pieces_total
    folder = Path(tempfile.mkdtemp(prefix=".export-", dir=store.data_dir))
    path = folder / f"audio.{fmt}"
    try:
        chunks = timeline.audio_chunks(pieces, lambda piece: store.read_piece(job_id, piece.index))
        await asyncio.to_thread(
            write_audio, chunks, path, fmt, chapters=timeline.chapters(row.chapters, pieces), title=row.title
        )
    except FileNotFoundError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if await asyncio.to_thread(store.get, job_id) is not None:
            raise
        raise APIError(404, f"job {job_id!r} does not exist", param="job_id", code="job_not_found") from exc  # deleted
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    headers = {
        "X-Chatterbox-Job-Complete": "true" if complete else "false",
        "Content-Disposition": _disposition(row, fmt),
    }
    return FileResponse(
        path,
        media_type=CONTENT_TYPES[fmt],
        headers=headers,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


@router.get(
    JOBS + "/{job_id}/pieces/{index}/audio",
    responses={
        **error_responses(401, 404, 503),
        200: {"content": {"audio/wav": {}}, "description": "one finished piece"},
    },
)
async def piece_audio(job_id: str, index: int, request: Request) -> Response:
    """One finished piece as WAV (16-bit, 24 kHz): the web page plays these while the rest is made."""
    service = _service(request)
    await _row(service, job_id)
    pieces = await asyncio.to_thread(service.store.pieces, job_id)
    if not 0 <= index < len(pieces) or not pieces[index].done:
        raise APIError(404, f"piece {index} of job {job_id!r} is not finished", param="index", code="piece_not_ready")
    try:
        wav = await asyncio.to_thread(service.store.read_piece, job_id, index)
    except FileNotFoundError as exc:
        raise APIError(404, f"job {job_id!r} does not exist", param="job_id", code="job_not_found") from exc
    buffer = io.BytesIO()
    sf.write(buffer, wav, timeline.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return Response(buffer.getvalue(), media_type="audio/wav")


@router.get(
    JOBS + "/{job_id}/subtitles",
    responses={
        **error_responses(401, 404, 503),
        200: {"content": {"text/vtt": {}, "application/x-subrip": {}}, "description": "one cue per piece"},
    },
)
async def job_subtitles(job_id: str, request: Request, format: Literal["vtt", "srt"] = "vtt") -> Response:
    """One cue per spoken piece, timed from the audio made (while running: the pieces done so far)."""
    service = _service(request)
    row = await _row(service, job_id)
    cues = timeline.cues(await asyncio.to_thread(service.store.done_prefix, job_id))
    if format == "srt":
        return Response(
            to_srt(cues),
            media_type="application/x-subrip",
            headers={"Content-Disposition": _disposition(row, "srt")},
        )
    return Response(
        to_webvtt(cues),
        media_type="text/vtt",
        headers={"Content-Disposition": _disposition(row, "vtt")},
    )
