"""What the server says while it starts: what loads now (for /health and the log), and one line once every model
is ready, with where to reach it.

The port opens at once, but until that line nothing but /health (503, with the stage) answers usefully, so no line
before it says the server runs: uvicorn's own "running" lines are dropped (`start_notices.py`).
"""

from __future__ import annotations

from ..settings import Settings
from .registry import ModelRegistry

READY_PREFIX = "chatterbox-vllm ready:"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # every interface: no one address to show


def base_url(host: str, port: int) -> str:
    """A URL that reaches the server from this machine: a wildcard address is shown as localhost, an IPv6 address
    in brackets."""
    if host in WILDCARD_HOSTS:
        name = "localhost"
    elif ":" in host:
        name = f"[{host}]"
    else:
        name = host
    return f"http://{name}:{port}"


def voices_directory(settings: Settings) -> str:
    """The voices directory the server uses (the setting, else the platform's user data directory), as the ready
    line shows it."""
    return str(settings.resolved_voices_dir())


def loading_line(settings: Settings, served: ModelRegistry, device: str) -> str:
    """What the server starts to load, said once before the first model loads."""
    names = ", ".join(state.describe() for state in served.states if state.status == "loading")
    return f"loading {names} on {device}, preset {settings.preset}; /health answers 503 until it is ready"


def current_stage(served: ModelRegistry) -> str | None:
    """The model loading now and what it does, e.g. `chatterbox-english (random-tiny): starting the T3 engine
    (vLLM)`; None when nothing loads."""
    for state in served.states:
        if state.status == "loading" and state.stage and not state.stage.startswith("waiting"):
            return f"{state.describe()}: {state.stage}"
    return None


def phases_text(phases: dict[str, float]) -> str:
    """Start-up phases as the log shows them: `t3_engine 41.2 s, s3gen_compile 12.0 s, ...`."""
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items()) or "no phases recorded"


def ready_after(served: ModelRegistry) -> float | None:
    """Seconds from the server's start until its last model was ready (None: none is)."""
    times = [state.ready_after_s for state in served.states if state.ready_after_s is not None]
    return max(times) if times else None


def ready_line(settings: Settings, served: ModelRegistry) -> str | None:
    """The one line that says the server serves: API and web page URLs, the models, preset, device and voices.
    None when no model loaded (their errors were logged instead)."""
    ready = [state for state in served.states if state.loaded is not None]
    if not ready:
        return None
    url = base_url(settings.host, settings.port)
    models = ", ".join(state.describe() for state in ready)
    devices = ", ".join(dict.fromkeys(str(loaded.tts.device) for loaded in served.loaded()))
    line = (
        f"{READY_PREFIX} API {url}/v1; web page {url}/; model{'s' if len(ready) > 1 else ''} {models}; "
        f"preset {settings.preset}; device {devices}; voices {voices_directory(settings)}"
    )
    seconds = ready_after(served)
    if seconds is not None:
        line += f"; started in {seconds:.1f} s"
    failed = [state.describe() for state in served.states if state.status == "error"]
    if failed:
        line += f"; not loaded: {', '.join(failed)} (see the errors above, or /health)"
    if settings.host in WILDCARD_HOSTS:
        line += f" (listening on every interface, port {settings.port})"
    return line
