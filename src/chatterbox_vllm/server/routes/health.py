"""Operations: /health (each model's state, start-up and S3Gen worker) and /metrics (Prometheus)."""

from __future__ import annotations

import torch
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ... import families
from ...checkpoint.hub import RANDOM_MODELS
from ..registry import ServedModel
from ..schemas import Health, ModelHealth, S3GenHealth, VramHealth
from ..startup import current_stage
from .common import registry_of, settings_of

router = APIRouter()


# A field is in the answer when it was given (exclude_unset): /health leaves out what does not apply.
@router.get("/health", response_model=Health, response_model_exclude_unset=True, responses={503: {"model": Health}})
async def health(request: Request, response: Response) -> Health:
    """200 once every model serves; 503 while one loads (`"status": "loading"`, with `loading`: the model loading now
    and its stage) or after one failed (`"error"`). The top level describes the default model (as with one model);
    `models` has every model's state (and its `stage` while it loads)."""
    served = registry_of(request)
    model = settings_of(request).model
    default = served.default
    models = [_model_health(s) for s in served.states]
    if served.status != "ready":
        response.status_code = 503
        body = Health(status=served.status, model=model, models=models)
        stage = current_stage(served)
        if stage is not None:
            body.loading = stage
        if default.error or served.status == "error":
            body.error = default.error or next(s.error for s in served.states if s.error)
        return body
    loaded = default.require_ready()
    device = loaded.tts.device
    body = Health(
        status="ok",
        model=model,
        variant=loaded.tts.variant,
        engine=loaded.tts.engine.name,
        device=str(device),
        speech_requests_in_progress=loaded.synthesizer.active,
        models=models,
    )
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        body.vram = VramHealth(used_gib=round((total - free) / 2**30, 2), total_gib=round(total / 2**30, 2))
    return body


def _model_health(state: ServedModel) -> ModelHealth:
    """One model in /health: its name for requests, what loaded it, and how it is."""
    entry = ModelHealth(id=state.id, model=state.model, variant=state.variant, status=state.status)
    if state.variant in families.names():
        entry.display_name = families.get(state.variant).display_name
    if state.stage is not None:
        entry.stage = state.stage
    loaded = state.loaded
    if loaded is not None:
        entry.engine = loaded.tts.engine.name
    if state.model in RANDOM_MODELS:
        entry.random_weights = True  # a random-tiny checkpoint: the audio is noise (the web page says so)
    if state.t3_budget_gib is not None:
        entry.t3_gpu_memory_gib = state.t3_budget_gib
    if state.ready_after_s is not None:  # how its start went (benchmarks/startup.py reads these)
        entry.ready_after_s = round(state.ready_after_s, 2)
    if loaded is not None:
        # What the start spent where; S3Gen's graphs and voice analysis warm up on S3Gen's thread before the model
        # is marked ready (a request would otherwise queue behind them), voice_warm_up last. With the S3Gen process
        # started beside T3's engine (`s3gen_beside`), its phases and voice_warm_up ran while t3_engine did, as
        # load_s3gen_voice_encoder always does (`engine_start`): the phases overlap and add up to more than
        # ready_after_s.
        phases = dict(loaded.tts.startup_phases)
        if loaded.tts.voices.warm_up_seconds is not None:
            phases["voice_warm_up"] = loaded.tts.voices.warm_up_seconds
        entry.startup_phases_s = {name: round(seconds, 2) for name, seconds in phases.items()}
        s3gen = loaded.synthesizer.s3gen_health()
        if s3gen is not None:  # S3Gen in worker processes: each one's device, pid, whether alive, restarts, load
            entry.s3gen = S3GenHealth.model_validate(s3gen)
    if state.error:
        entry.error = state.error
    return entry


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
