"""The models a request may name (OpenAI's list and cards, and the /v1/audio/models form) and the languages each
speaks."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..schemas import AudioModel, AudioModelList, Language, LanguageList, ModelCard, ModelList, error_responses
from .common import registry_of, settings_of

router = APIRouter()
CREATED = 1_732_406_400  # a fixed "created" timestamp for the model list


def _card(model_id: str) -> ModelCard:
    return ModelCard(id=model_id, created=CREATED)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    """The names a speech request may use: OpenAI's and `chatterbox` (the default model), then each loaded model."""
    return ModelList(data=[_card(m) for m in registry_of(request).ids()])


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=error_responses(404))
async def get_model(model_id: str, request: Request) -> ModelCard:
    registry_of(request).for_request(model_id, status=404)
    return _card(model_id)


@router.get("/v1/audio/models", response_model=AudioModelList)
async def list_audio_models(request: Request) -> AudioModelList:
    return AudioModelList(models=[AudioModel(id=m, name=m) for m in registry_of(request).ids()])


@router.get("/v1/audio/languages", response_model=LanguageList, responses=error_responses(400, 503))
async def list_languages(request: Request, model: str | None = None) -> LanguageList:
    """The languages a model speaks (`?model=`, default the default model; English alone but for the multilingual
    model), and the input limit. Open without a key, like the other listings."""
    models = registry_of(request)
    loaded = (models.for_request(model) if model else models.default).require_ready()
    codes = loaded.tts.family.languages
    return LanguageList(
        languages=[Language(code=code, name=name) for code, name in codes.items()],
        max_input_chars=settings_of(request).max_input_chars,
    )
