"""Optional bearer-token auth (CHATTERBOX_API_KEY). Listing endpoints stay open: Open WebUI fetches them bare."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import APIError


def require_api_key(request: Request) -> None:
    expected: str | None = request.app.state.settings.api_key
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(
            401,
            "invalid or missing API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
