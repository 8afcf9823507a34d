"""`chatterbox-vllm` command line: serve the API, synthesize to a file, make random checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from .settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _family_help() -> str:
    from . import families

    return "model family: " + ", ".join(families.names())


_FAMILY_HELP = _family_help()


def _registered_family(name: str) -> str:
    """`--variant` names a registered model family (`families`)."""
    from . import families

    if name not in families.names():
        raise typer.BadParameter(f"{name!r} is not one of: {', '.join(families.names())}")
    return name


class SizeChoice(StrEnum):
    full = "full"
    tiny = "tiny"


@app.command("make-checkpoint")
def make_checkpoint(
    out: Annotated[Path, typer.Option(help="directory to write (created)")],
    variant: Annotated[str, typer.Option(help=_FAMILY_HELP, callback=_registered_family)] = "english",
    size: Annotated[SizeChoice, typer.Option(help="full: the published dimensions; tiny: for tests")] = SizeChoice.tiny,
    seed: Annotated[int, typer.Option(help="seed of every tensor's values")] = 0,
) -> None:
    """Write a random-weight checkpoint in the published layout (its audio is noise: for tests and smoke runs)."""
    from .random_checkpoint import write_random_checkpoint

    start = time.perf_counter()
    write_random_checkpoint(variant=variant, size=size.value, seed=seed, out=out)
    typer.echo(f"wrote {variant} {size.value} checkpoint (seed {seed}) to {out} in {time.perf_counter() - start:.1f} s")


@app.command()
def synthesize(
    text: Annotated[str, typer.Argument(help="text to speak")],
    out: Annotated[Path, typer.Option("--out", "-o", help="WAV file to write")] = Path("speech.wav"),
    model: Annotated[str, typer.Option(help="english | multilingual | a checkpoint directory")] = "english",
    language: Annotated[str | None, typer.Option(help="language id (multilingual model)")] = None,
    voice: Annotated[Path | None, typer.Option(help="reference clip to clone")] = None,
    exaggeration: float = 0.5,
    cfg_weight: float = 0.5,
    temperature: float = 0.8,
    seed: Annotated[int | None, typer.Option(help="seed for reproducible output")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available)")] = None,
    engine: Annotated[str, typer.Option(help="T3 engine: auto (vLLM if installed) | vllm | torch")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="most speech tokens to generate (25 per second)")] = 1000,
) -> None:
    """Synthesize one text to a 24 kHz WAV file."""
    import soundfile

    from .checkpoint.weights import CheckpointError
    from .tts import ChatterboxTTS

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        tts = ChatterboxTTS.from_pretrained(model, device=device, engine=engine)
        start = time.perf_counter()
        try:
            wav = tts.generate(
                text,
                language_id=language,
                audio_prompt_path=voice,
                exaggeration=exaggeration,
                cfg_weight=cfg_weight,
                temperature=temperature,
                seed=seed,
                max_new_tokens=max_new_tokens,
            )
        finally:
            tts.close()
    except (CheckpointError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    soundfile.write(str(out), wav, tts.sample_rate, subtype="PCM_16")
    seconds = len(wav) / tts.sample_rate
    typer.echo(f"wrote {out}: {seconds:.2f} s of audio in {time.perf_counter() - start:.1f} s")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on [CHATTERBOX_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [CHATTERBOX_PORT]")] = None,
    model: Annotated[
        str | None, typer.Option(help="english | multilingual | turbo | nano | a directory [CHATTERBOX_MODEL]")
    ] = None,
    extra_models: Annotated[
        str | None, typer.Option(help="more models to serve beside it, comma-separated [CHATTERBOX_EXTRA_MODELS]")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="auto | vllm | torch [CHATTERBOX_ENGINE]")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cuda | cuda:N | cpu [CHATTERBOX_DEVICE]")] = None,
    preset: Annotated[str | None, typer.Option(help="VRAM preset low | medium | high [CHATTERBOX_PRESET]")] = None,
    gpu_memory_gib: Annotated[float | None, typer.Option(help="T3 GPU budget, GiB [CHATTERBOX_GPU_MEMORY_GIB]")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="[CHATTERBOX_MAX_BATCH_SIZE]")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="[CHATTERBOX_MAX_MODEL_LEN]")] = None,
    api_key: Annotated[str | None, typer.Option(help="require this bearer key [CHATTERBOX_API_KEY]")] = None,
    voices_dir: Annotated[
        str | None,
        typer.Option(help="directory of cloned voices (default: the user data directory's) [CHATTERBOX_VOICES_DIR]"),
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(help="directory of long-form jobs (default: the user data directory) [CHATTERBOX_DATA_DIR]"),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="info | warning | error | debug (shows everything) [CHATTERBOX_LOG_LEVEL]")
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="print the effective settings as JSON and exit")
    ] = False,
) -> None:
    """Run the OpenAI-compatible speech server. Flags override CHATTERBOX_* variables (and .env)."""
    from pydantic import ValidationError

    from .log_config import configure_logging
    from .settings import Settings

    flags: dict[str, Any] = {
        "host": host, "port": port, "model": model, "extra_models": extra_models, "engine": engine, "device": device,
        "preset": preset, "gpu_memory_gib": gpu_memory_gib, "max_batch_size": max_batch_size,
        "max_model_len": max_model_len, "api_key": api_key, "voices_dir": voices_dir, "log_level": log_level,
        "data_dir": data_dir,
    }  # fmt: skip
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: invalid settings:\n{exc}", err=True)
        raise typer.Exit(code=2) from exc
    if print_config:  # what a start would run with: presets resolved, the key never echoed
        typer.echo(json.dumps(effective_config(settings), indent=2))
        return
    log_config = configure_logging(settings.log_level)
    from .cuda_mps import start_mps, stop_mps

    # MPS before the first CUDA context (ours, vLLM's engine process, the S3Gen worker: they inherit its pipes).
    mps = start_mps(settings.cuda_mps, settings.resolved_cache_dir(), settings.device)
    if mps.mode == "unavailable":
        logging.getLogger(__name__).warning("NVIDIA MPS asked for but not used: %s", mps.reason)
    elif mps.active:
        logging.getLogger(__name__).info("NVIDIA MPS: %s", mps.describe())
    try:
        _serve_with(settings, log_config)
    finally:
        stop_mps(mps)


def _serve_with(settings: Settings, log_config: dict[str, Any]) -> None:
    """The rest of `serve`, once the process is set up for its settings: checks, then uvicorn until stopped."""
    import uvicorn

    from .process_setup import configure_process
    from .server.app import create_app

    configure_process(settings)  # compile caches, vLLM's sampler, TF32: before anything loads or compiles
    from huggingface_hub import constants as hf_constants

    from .checkpoint.hub import is_hub_model, resolve_model, variants_of
    from .checkpoint.weights import CheckpointError

    # What can be known at once is checked before the port opens, so a typo exits 2 with a readable message: each
    # name is a model (or a directory of one), and offline, a hub model is in the cache. Downloads and the random
    # checkpoint are written while the port already answers /health with that stage.
    try:
        for variant in variants_of(settings.models):
            if isinstance(variant, CheckpointError):
                raise variant
        if hf_constants.HF_HUB_OFFLINE:
            for name in settings.models:
                if is_hub_model(name):
                    resolve_model(name, revision=settings.revision, local_files_only=True)
    except CheckpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    # uvicorn drains on SIGTERM/SIGINT (no new connections; requests in progress get `drain_timeout_s`), then
    # raises the signal again for whoever handled it before. Handling it here makes a drained stop exit 0,
    # which systemd, Docker and Kubernetes read as a clean stop.
    before = {stop_signal: signal.signal(stop_signal, _stopped) for stop_signal in (signal.SIGTERM, signal.SIGINT)}
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_config=log_config,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]  # uvicorn awaits float seconds
    )  # fmt: skip
    for stop_signal, handler in before.items():
        signal.signal(stop_signal, handler)
    logging.getLogger(__name__).info("stopped")


def _stopped(signum: int, _frame: object) -> None:
    """Re-raised by uvicorn after its graceful shutdown: nothing is left to do but return from `serve`."""


def effective_config(settings: Settings) -> dict[str, object]:
    """Settings as the server applies them: every field, the preset's limits filled in, the API key masked, the
    voices and jobs directories it would use when none is set."""
    config = settings.model_dump()
    config["api_key"] = "***" if settings.api_key else None
    config["voices_dir"] = settings.voices_dir or str(settings.resolved_voices_dir())
    config["data_dir"] = settings.data_dir or str(settings.resolved_data_dir())
    config["limits"] = dataclasses.asdict(settings.limits())
    return config


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
