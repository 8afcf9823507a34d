"""Optional bearer-token auth (CHATTERBOX_API_KEY).

Open without a key: the listing endpoints (Open WebUI fetches them bare), /health (container and Kubernetes
probes) and /metrics (Prometheus scrapes). Everything else goes through `require_api_key`.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from .errors import APIError


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def key_matches(offered: str, expected: str) -> bool:
    """Constant-time in the content of both keys: the digests have one length, and `compare_digest` does not
    stop at the first differing byte, so response times reveal neither the key nor how much of it was right."""
    return hmac.compare_digest(_digest(offered), _digest(expected))


def require_api_key(request: Request) -> None:
    expected: str | None = request.app.state.settings.api_key
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not key_matches(token.strip(), expected) or scheme.lower() != "bearer":
        raise APIError(
            401,
            "invalid or missing API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
