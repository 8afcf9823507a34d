"""Every failure leaves the server in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.

Clients written for OpenAI (its Python SDK, Open WebUI) read `error.message`; FastAPI's own 422 detail lists and
HTML 500 pages would reach users as opaque failures.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .schemas import ErrorDetail, ErrorResponse
from .validation import describe_validation

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
# Codes of errors raised by Starlette itself (routing, body parsing) rather than by our routes.
HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def describe_failure(exc: BaseException) -> str:
    """One line for a response or the log: the exception's type and message, never its traceback."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def log_failure(what: str, exc: BaseException) -> None:
    """An error as one log line; the traceback only at DEBUG level, where an operator asked for it."""
    log.error("%s: %s", what, describe_failure(exc))
    log.debug("traceback of the error above", exc_info=exc)


class APIError(Exception):
    """An error to answer with; `param` names the offending request field, `code` (required: clients branch on
    it) says what went wrong in one word."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_detail(status: int, message: str, param: str | None, code: str) -> ErrorDetail:
    return ErrorDetail(message=message, type=ERROR_TYPES.get(status, "invalid_request_error"), param=param, code=code)


def error_body(status: int, message: str, param: str | None, code: str) -> dict[str, Any]:
    """OpenAI's error shape as JSON-ready data (`ErrorResponse`)."""
    return ErrorResponse(error=error_detail(status, message, param, code)).model_dump()


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.message, error.param, error.code),
        status_code=error.status,
        headers=error.headers,
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on the request's path (Starlette's Allow header names only the first
    route's: GET and POST /v1/audio/voices are two routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods - {"HEAD"})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = describe_validation(exc.errors())
        return JSONResponse(error_body(400, message, param, code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = (
                "no such route; see /v1/audio/speech, /v1/audio/voices, /v1/audio/languages, /v1/models, /health, "
                "/metrics, and the web page at /"
            )
        elif exc.status_code == 405 and (allowed := _allowed_methods(request)):
            message = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(allowed)}"
        code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, "invalid_request")
        return JSONResponse(
            error_body(exc.status_code, message, getattr(exc, "param", None), code),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_failure(f"unhandled error in {request.method} {request.url.path}", exc)
        return JSONResponse(error_body(500, "internal server error", None, "internal_error"), status_code=500)
