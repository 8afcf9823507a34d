"""Request body limits, enforced before a body is parsed.

FastAPI reads a JSON body whole, and Starlette spools a multipart upload to a temporary file before any route
code sees it: without a limit in front, one client could fill the memory or the disk. This ASGI middleware
refuses a declared Content-Length over the limit before reading a byte, and stops a chunked body at the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # form fields and part headers beside the audio file
JSON_FLOOR_BYTES = 1 << 20
JSON_BYTES_PER_CHAR = 12  # an astral character escaped in JSON: \ud83d\ude00
UPLOAD_ROUTES = frozenset({"/v1/audio/voices"})
JOB_ROUTE = "/v1/audio/speech/jobs"  # a job's text as JSON, or its file as multipart: the larger of both limits


@dataclass(frozen=True)
class BodyLimits:
    json_bytes: int
    upload_bytes: int
    job_bytes: int = 0  # POST /v1/audio/speech/jobs (0: as any JSON route)

    @classmethod
    def for_limits(
        cls, max_input_chars: int, max_upload_bytes: int, *, job_input_chars: int = 0, job_upload_bytes: int = 0
    ) -> BodyLimits:
        """Room for the longest accepted `input` written in the most expensive JSON escapes, and for the largest
        accepted voice clip with its form fields; for a job, room for its longest input or its largest file."""
        json_bytes = max(JSON_FLOOR_BYTES, max_input_chars * JSON_BYTES_PER_CHAR + 64 * 1024)
        job_bytes = max(json_bytes, job_input_chars * JSON_BYTES_PER_CHAR + 64 * 1024,
                        job_upload_bytes + MULTIPART_OVERHEAD_BYTES)  # fmt: skip
        return cls(json_bytes=json_bytes, upload_bytes=max_upload_bytes + MULTIPART_OVERHEAD_BYTES, job_bytes=job_bytes)

    def for_path(self, path: str) -> int:
        if self.job_bytes and path.rstrip("/") == JOB_ROUTE:
            return self.job_bytes
        return self.upload_bytes if is_upload(path) else self.json_bytes


def is_upload(path: str) -> bool:
    return path.rstrip("/") in UPLOAD_ROUTES


def upload_too_large_message(max_upload_bytes: int) -> str:
    """The one wording of an upload over the limit, whichever check finds it."""
    return (f"audio_sample is larger than {max_upload_bytes / 2**20:.3g} MiB, the server's upload limit "
            "(CHATTERBOX_MAX_UPLOAD_MIB); 5-15 s of speech is all a voice needs")  # fmt: skip


def too_large(path: str, limit: int) -> tuple[str, str | None, str]:
    """The 413's message, `param` and `code`: uploads name the file field and the upload limit in MiB."""
    if is_upload(path):
        return upload_too_large_message(limit - MULTIPART_OVERHEAD_BYTES), "audio_sample", "file_too_large"
    return f"the request body is larger than the limit of {limit} bytes", None, "request_too_large"


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit; FastAPI re-raises HTTPExceptions from body
    parsing, and the error handlers answer it in OpenAI's shape (with this `param` and `code`)."""

    def __init__(self, path: str, limit: int) -> None:
        message, self.param, self.code = too_large(path, limit)
        super().__init__(413, message)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(scope["path"], limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length before we get here
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    """A 413 before the body is read, rendered like every other error; the connection closes, as the unread
    body cannot be skipped."""
    message, param, code = too_large(scope["path"], limit)
    response = JSONResponse(error_body(413, message, param, code), status_code=413, headers={"Connection": "close"})
    await response(scope, receive, send)
