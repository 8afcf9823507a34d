"""What the route modules read from the app: its settings, its model registry and its voices."""

from __future__ import annotations

from fastapi import Request

from ...settings import Settings
from ..registry import ModelRegistry
from ..voices import VoiceLibrary


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def registry_of(request: Request) -> ModelRegistry:
    models: ModelRegistry = request.app.state.models
    return models


def voices_of(request: Request) -> VoiceLibrary:
    """The voices (one library for every model), once the default model serves (else a 503)."""
    return registry_of(request).default.require_ready().voices
