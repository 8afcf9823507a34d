"""Where the served model is: loading, ready (with its service and voices) or failed, and the 503s that follow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import APIError

if TYPE_CHECKING:
    from ..tts import ChatterboxTTS
    from .service import SpeechService
    from .voices import VoiceLibrary

LOADING_RETRY_AFTER_S = 10


@dataclass
class ModelState:
    """Where the model is: loading, ready (with its service and voices) or failed (with a one-line reason)."""

    status: Literal["loading", "ready", "error"] = "loading"
    error: str | None = None
    tts: ChatterboxTTS | None = None
    service: SpeechService | None = None
    voices: VoiceLibrary | None = None

    def require_ready(self) -> None:
        """503 unless the model is ready: Retry-After while it loads, the reason once loading failed."""
        if self.status == "loading":
            raise APIError(
                503, "the model is still loading; retry shortly", code="model_loading",
                headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
            )  # fmt: skip
        if self.status == "error":
            raise APIError(503, f"the model failed to load: {self.error}", code="model_unavailable")
