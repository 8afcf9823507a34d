"""The FastAPI application: serves the routes (`routes/`) while the `ModelLoader` loads the models in the background.

The port opens at once. Until a model is ready, /health answers 503 with `"status": "loading"` and speech
requests for it 503 with Retry-After; if loading fails, the server stays up and says why (`"status": "error"`)
instead of dying in a restart loop with the reason scrolled away.

CHATTERBOX_EXTRA_MODELS loads more models beside CHATTERBOX_MODEL, one after another, each with its own T3 engine,
S3Gen and worker thread; they share the request places (max_queue) and the voices directory. On a GPU they are
planned into the VRAM budget first (`vram_plan.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..jobs.service import JobService
from ..process_setup import configure_process
from ..settings import Settings
from ..tts import ChatterboxTTS
from .errors import install_error_handlers
from .limits import BodyLimits, BodySizeLimit
from .model_loader import ModelLoader, model_states
from .registry import ModelRegistry, ServedModel
from .routes import STATIC_DIR, router


def create_app(
    settings: Settings | None = None, tts: ChatterboxTTS | None = None, *, extra: Sequence[ChatterboxTTS] = ()
) -> FastAPI:
    """An app for `settings`; its models load at start. Pass a loaded `tts` (and `extra` ones, served beside it)
    to share models between apps (tests): then settings.model and extra_models are not read."""
    settings = settings or Settings()
    if tts is not None:
        preloaded = [tts, *extra]
        served = ModelRegistry([ServedModel(model=settings.model if i == 0 else m.variant, variant=m.variant)
                                for i, m in enumerate(preloaded)])  # fmt: skip
    else:
        preloaded = []
        served = ModelRegistry(model_states(settings))
    loader = ModelLoader(settings, served)
    jobs = JobService(settings, served)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading: asyncio.Task[None] | None = None
        loader.open_voices()
        if preloaded:
            for state, model in zip(served.states, preloaded, strict=True):
                loader.serve(state, model)
            loader.announce_ready()
        else:
            # Compile caches, TF32: process-wide, set as the app starts, before its models load (not when it is
            # built: an app made only for its OpenAPI schema changes nothing).
            configure_process(settings)
            loading = asyncio.create_task(loader.load())
        jobs.start()  # the runner waits for each job's model to be ready
        try:
            yield
        finally:
            await jobs.stop()
            if loading is not None:
                await loading  # a load thread cannot be interrupted; let it finish, then release what it made
            loader.close(owned=not preloaded)

    app = FastAPI(title="chatterbox-vllm", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.models = served
    app.state.model = served.default  # the default model's state (tests and older callers read it)
    app.state.loader = loader
    app.state.admission = loader.admission  # the speech requests in progress, every model's (tests read it)
    app.state.jobs = jobs
    limits = BodyLimits.for_limits(settings.max_input_chars, settings.max_upload_bytes,
                                   job_input_chars=settings.job_max_input_chars,
                                   job_upload_bytes=settings.job_max_upload_bytes)  # fmt: skip
    app.add_middleware(BodySizeLimit, limits=limits)
    # Browsers (web UIs on another origin) call the API directly; auth, when set, is the bearer key.
    # Added last, so it is outermost: refusals from the middleware above carry CORS headers too.
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    install_error_handlers(app)
    app.include_router(router)
    # The web page's scripts and styles (the page itself is `/`); mounts are not in the OpenAPI schema.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
