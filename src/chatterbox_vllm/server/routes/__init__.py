"""The HTTP routes, one module per resource: speech, models (and their languages), voices, health and metrics, and
the web page. Routes translate HTTP to and from the typed bodies of `schemas.py` and nothing else: what a request
does lives in the modules they call (a speech request's whole life in `speech_job.py`).
"""

from __future__ import annotations

from fastapi import APIRouter

from . import health, jobs, models, page, speech, voices
from .page import STATIC_DIR

router = APIRouter()
for _module in (speech, jobs, models, voices, page, health):
    router.include_router(_module.router)

__all__ = ["STATIC_DIR", "router"]
