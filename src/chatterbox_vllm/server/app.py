"""The FastAPI application: serves the routes in `routes.py` while the model loads in the background.

The port opens at once. Until the model is ready, /health answers 503 with `"status": "loading"` and speech
requests 503 with Retry-After; if loading fails, the server stays up and says why (`"status": "error"`) instead
of dying in a restart loop with the reason scrolled away.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..settings import Settings
from ..tts import ChatterboxTTS
from .errors import describe_failure, install_error_handlers, log_failure
from .limits import BodyLimits, BodySizeLimit
from .metrics import T3_IN_ENGINE
from .routes import STATIC_DIR, router
from .service import SpeechService
from .state import ModelState
from .voices import VoiceLibrary

log = logging.getLogger(__name__)


def _serve(state: ModelState, tts: ChatterboxTTS, settings: Settings) -> None:
    """Build what requests use around a loaded model, then mark the state ready."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)  # see the setting: S3Gen's launches wait on it
    service = SpeechService(tts, settings)
    try:
        voices = VoiceLibrary(
            Path(settings.voices_dir) if settings.voices_dir else None,
            multilingual=tts.is_multilingual,
            max_upload_bytes=settings.max_upload_bytes,
        )
    except BaseException:
        service.close()
        raise
    state.tts, state.service, state.voices = tts, service, voices
    count = getattr(tts.engine, "num_unfinished_requests", None)
    if count is not None:
        T3_IN_ENGINE.set_function(count)
    state.status = "ready"
    log.info("serving %s Chatterbox on %s:%d", tts.variant, settings.host, settings.port)


def create_app(settings: Settings | None = None, tts: ChatterboxTTS | None = None) -> FastAPI:
    """An app for `settings`; pass a loaded `tts` to share one model between apps (tests), else it loads at start."""
    settings = settings or Settings()
    state = ModelState()

    async def load() -> None:
        model: ChatterboxTTS | None = None
        try:
            model = await asyncio.to_thread(ChatterboxTTS.from_settings, settings)
            await asyncio.to_thread(_serve, state, model, settings)
        except Exception as exc:
            if model is not None:
                model.close()
            state.status, state.error = "error", describe_failure(exc)
            log_failure("the model failed to load; the server stays up and answers 503", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = tts is None
        loading: asyncio.Task[None] | None = None
        if tts is not None:
            _serve(state, tts, settings)
        else:
            loading = asyncio.create_task(load())
        try:
            yield
        finally:
            if loading is not None:
                await loading  # a load thread cannot be interrupted; let it finish, then release what it made
            if state.service is not None:
                state.service.close()
            if owned and state.tts is not None:
                state.tts.close()

    app = FastAPI(title="chatterbox-vllm", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.model = state
    limits = BodyLimits.for_limits(settings.max_input_chars, settings.max_upload_bytes)
    app.add_middleware(BodySizeLimit, limits=limits)
    # Browsers (web UIs on another origin) call the API directly; auth, when set, is the bearer key.
    # Added last, so it is outermost: refusals from the middleware above carry CORS headers too.
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    install_error_handlers(app)
    app.include_router(router)
    # The web page's scripts and styles (the page itself is `/`); mounts are not in the OpenAPI schema.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
