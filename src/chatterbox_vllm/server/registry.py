"""The registry of served models: each model's state (loading, ready with what serves it, or failed) and which
model a request's `model` field names.

Owns the names (`chatterbox-<variant>`, OpenAI's aliases) and the 503/400/404 answers about a model; does not load
anything (`model_loader.py` does) nor synthesize (`synthesis.py`).

Each loaded model is served as `chatterbox-<variant>` (chatterbox-english, chatterbox-turbo, ...). OpenAI's model
names and plain `chatterbox` go to the default model (CHATTERBOX_MODEL), so OpenAI clients work unchanged; a
Chatterbox model the server did not load is a 400 that says how to load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .. import families
from ..families import ModelFamily
from ..text.languages import SUPPORTED_LANGUAGES
from .errors import APIError
from .schemas import OPENAI_MODELS

if TYPE_CHECKING:
    from ..tts import ChatterboxTTS
    from .synthesis import Synthesizer
    from .voices import VoiceLibrary

LOADING_RETRY_AFTER_S = 10
DEFAULT_ALIAS = "chatterbox"  # with OpenAI's names: whatever CHATTERBOX_MODEL loaded
SERVED_PREFIX = "chatterbox-"

Status = Literal["loading", "ready", "error"]


def served_id(variant: str) -> str:
    """The name requests use for a model of `variant`, e.g. chatterbox-turbo."""
    return SERVED_PREFIX + variant


@dataclass(frozen=True)
class LoadedModel:
    """What a ready model serves with: none of it can be missing once the model is ready."""

    id: str  # the name requests use, e.g. chatterbox-turbo
    tts: ChatterboxTTS
    synthesizer: Synthesizer
    voices: VoiceLibrary  # the server's one library (every model's)


@dataclass
class ServedModel:
    """One model: loading, ready (`loaded`) or failed (`error`, a one-line reason)."""

    model: str = ""  # the setting that names it: english, turbo, a directory, ...
    variant: str | None = None  # known before it loads (from the name or the directory's files)
    t3_budget_gib: float | None = None  # T3's GPU budget when a VRAM plan shared the GPU between models
    stage: str | None = None  # while loading: what it does now ("starting the T3 engine (vLLM)", ...)
    ready_after_s: float | None = None  # seconds from the server's start until this model was ready
    error: str | None = None  # why it failed to load
    loaded: LoadedModel | None = None  # set once it serves

    @property
    def status(self) -> Status:
        """ready once loaded, error once it failed, loading before either."""
        if self.loaded is not None:
            return "ready"
        return "error" if self.error is not None else "loading"

    def fail(self, reason: str) -> None:
        """Mark it failed to load, for good (the server stays up and says why)."""
        self.error, self.stage = reason, None

    @property
    def id(self) -> str | None:
        """The name requests use for this model, e.g. chatterbox-turbo."""
        return served_id(self.variant) if self.variant else None

    @property
    def family(self) -> ModelFamily | None:
        """The model's family (languages, ...), known with its variant before it loads."""
        return families.get(self.variant) if self.variant else None

    def describe(self) -> str:
        """The model as the log and /health name it: its id and the setting that named it, e.g.
        `chatterbox-english (random-tiny)`."""
        if self.id is None:
            return self.model
        return self.id if self.model == self.variant else f"{self.id} ({self.model})"

    def require_ready(self) -> LoadedModel:
        """What the model serves with, or a 503: Retry-After while it loads, the reason once loading failed."""
        if self.loaded is not None:
            return self.loaded
        what = f"the model {self.id}" if self.id else "the model"
        if self.error is not None:
            raise APIError(503, f"{what} failed to load: {self.error}", code="model_unavailable")
        raise APIError(
            503, f"{what} is still loading; retry shortly", code="model_loading",
            headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
        )  # fmt: skip


class ModelRegistry:
    """The server's models, the default (CHATTERBOX_MODEL) first."""

    def __init__(self, states: list[ServedModel]) -> None:
        if not states:
            raise ValueError("a server needs at least one model")
        self.states = states

    @property
    def default(self) -> ServedModel:
        return self.states[0]

    @property
    def status(self) -> Status:
        """loading while any model loads; then error if any failed, else ready."""
        statuses = {state.status for state in self.states}
        if "loading" in statuses:
            return "loading"
        return "error" if "error" in statuses else "ready"

    def loaded(self) -> list[LoadedModel]:
        """The models that serve now, in order."""
        return [state.loaded for state in self.states if state.loaded is not None]

    def ids(self) -> tuple[str, ...]:
        """Every name a request may send: OpenAI's, the default alias, then each model's own."""
        own = tuple(state.id for state in self.states if state.id)
        return (*OPENAI_MODELS, DEFAULT_ALIAS, *own)

    def find(self, name: str) -> ServedModel | None:
        if name in OPENAI_MODELS or name == DEFAULT_ALIAS:
            return self.default
        return next((state for state in self.states if state.id == name), None)

    def for_request(self, name: str, status: int = 400) -> ServedModel:
        """The model `name` names, or a `status` error (OpenAI's code model_not_found) that lists what is served."""
        state = self.find(name)
        if state is not None:
            return state
        message = f"model {name!r} is not served here; use one of {', '.join(self.ids())}"
        if name.startswith(SERVED_PREFIX) and name[len(SERVED_PREFIX) :] in families.names():
            variant = name[len(SERVED_PREFIX) :]
            message = (
                f"model {name!r} is not loaded on this server (it serves {', '.join(self.ids())}); "
                f"start it with CHATTERBOX_EXTRA_MODELS={variant} to serve it too"
            )
        raise APIError(status, message, param="model", code="model_not_found")

    def language_advice(self, language: str) -> str:
        """Where speech in `language` (a supported code other than English, which every model speaks) can be had:
        the loaded model that speaks it, else how to load one."""
        name = SUPPORTED_LANGUAGES.get(language, language)
        speakers = [state for state in self.states if state.family is not None and state.family.multilingual]
        serving = [state.id for state in speakers if state.status != "error"]
        if serving:
            return f'{name} is spoken by the model {serving[0]}: send "model": "{serving[0]}"'
        if speakers:
            return f"{name} needs the multilingual model, which failed to load on this server (GET /health says why)"
        return (
            f"{name} needs the multilingual model, which this server has not loaded: start the server with "
            f"CHATTERBOX_MODEL=multilingual, or with CHATTERBOX_EXTRA_MODELS=multilingual to serve it beside "
            f"the {self.default.variant or 'default'} model"
        )
