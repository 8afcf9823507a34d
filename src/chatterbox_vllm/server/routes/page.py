"""The web page to try voices (`/`, its files under /static/), kept out of the OpenAPI schema."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

router = APIRouter()
STATIC_DIR = Path(__file__).parent.with_name("static")  # the web page's files (package data)
# The page loads only its own files and talks only to this server; blob: is the audio it makes.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    """The page to try voices (static/index.html); its scripts and styles are served under /static/."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> RedirectResponse:
    """Browsers and other tools ask for /favicon.ico whatever the page links: the page's SVG icon."""
    return RedirectResponse("/static/favicon.svg", status_code=308, headers={"Cache-Control": "max-age=86400"})
