"""The FastAPI application: loads the model once at start-up and serves the routes in `routes.py`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..settings import Settings
from ..tts import ChatterboxTTS
from .errors import install_error_handlers
from .routes import router
from .service import SpeechService
from .voices import VoiceLibrary

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, tts: ChatterboxTTS | None = None) -> FastAPI:
    """An app for `settings`; pass a loaded `tts` to share one model between apps (tests), else it loads at start."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = tts is None
        model = tts if tts is not None else await asyncio.to_thread(ChatterboxTTS.from_settings, settings)
        app.state.tts = model
        app.state.service = SpeechService(model, settings)
        app.state.voices = VoiceLibrary(
            Path(settings.voices_dir) if settings.voices_dir else None,
            multilingual=model.is_multilingual,
            max_upload_bytes=int(settings.max_upload_mib * 2**20),
        )
        log.info("serving %s Chatterbox on %s:%d", model.variant, settings.host, settings.port)
        try:
            yield
        finally:
            app.state.service.close()
            if owned:
                model.close()

    app = FastAPI(title="chatterbox-vllm", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    # Browsers (web UIs on another origin) call the API directly; auth, when set, is the bearer key.
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    install_error_handlers(app)
    app.include_router(router)
    return app
