"""Finding a checkpoint: a Hugging Face hub download (cached), or a local directory.

Users reach the weights three ways: the hub (default), a mirror of the hub's cache (offline), or a directory they
copied by hand. All three end in a directory laid out as `layout.py` describes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from .. import families
from ..compile_cache import cache_root
from .layout import LAYOUTS, CheckpointLayout, Variant
from .weights import CheckpointError


class _ModelNames(Mapping[str, Variant]):
    """Model names the registered families declare, each to its family's name: their hub aliases (`random`
    False) or their random-weight stand-ins (`random` True). Read from the registry when asked."""

    def __init__(self, *, random: bool) -> None:
        self._random = random

    def _names(self) -> dict[str, Variant]:
        if self._random:
            return {f.random_model: f.name for f in families.all_families() if f.random_model}
        return {alias: f.name for f in families.all_families() for alias in f.hub_aliases}

    def __getitem__(self, name: str) -> Variant:
        return self._names()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


MODEL_ALIASES: Mapping[str, Variant] = _ModelNames(random=False)
# Random-weight checkpoints (tiny dimensions, seed 0), written on first use: the whole pipeline without any
# download. The audio is noise; this is for smoke tests and trying the API offline.
RANDOM_MODELS: Mapping[str, Variant] = _ModelNames(random=True)


def random_checkpoint_dir(variant: Variant, cache_dir: Path | None = None) -> Path:
    """Where `random-tiny` checkpoints live: `random/` in the server's cache directory (`cache_dir`; None: the
    settings', CHATTERBOX_CACHE_DIR, default ~/.cache/chatterbox-vllm)."""
    return cache_root(cache_dir) / "random" / f"{variant}-tiny-seed0"


def detect_layout(directory: Path) -> CheckpointLayout:
    """Tell the variant of a checkpoint directory from the T3 file it holds."""
    for layout in LAYOUTS.values():
        if (directory / layout.t3).is_file():
            return layout
    names = ", ".join(sorted(f"{layout.variant}: {layout.t3}" for layout in LAYOUTS.values()))
    raise CheckpointError(f"{directory}: no Chatterbox T3 weights found (looked for {names})")


def check_complete(directory: Path, layout: CheckpointLayout) -> None:
    missing = [name for name in layout.files if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory}: incomplete {layout.variant} checkpoint, missing {', '.join(missing)}")


def download(
    variant: Variant,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Fetch (or find in the cache) the files of `variant` and return the snapshot directory.

    `local_files_only=None` follows HF_HUB_OFFLINE, as huggingface_hub itself does.
    """
    layout = LAYOUTS[variant]
    repo_id = repo_id or layout.repo_id
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=[*layout.files, *layout.optional_files],
            local_files_only=local_files_only,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        where = "in the local Hugging Face cache" if local_files_only else "on the Hugging Face hub"
        raise CheckpointError(
            f"could not get the {variant} Chatterbox weights ({repo_id}) {where}: {type(exc).__name__}: {exc}\n"
            "To run without the hub, copy the files "
            f"({', '.join(layout.files)}) into a directory and pass that directory as the model "
            "(CHATTERBOX_MODEL=/path/to/dir, or ChatterboxTTS.from_local('/path/to/dir')). For a smoke test "
            "without real weights, `chatterbox-vllm make-checkpoint --variant english --size tiny --out DIR` "
            "writes a random-weight checkpoint (its audio is noise), or set CHATTERBOX_MODEL=random-tiny to have "
            "the server make one and run the whole pipeline on it."
        ) from exc
    directory = Path(path)
    check_complete(directory, layout)
    return directory


def variant_of(model: str) -> Variant:
    """The variant a model setting names, without downloading or loading anything (a directory is looked at)."""
    name = model.strip().lower()
    if name in RANDOM_MODELS:
        return RANDOM_MODELS[name]
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    directory = Path(model).expanduser()
    if not directory.is_dir():
        raise CheckpointError(
            f"model {model!r} is neither a known name ({', '.join(sorted(MODEL_ALIASES) + sorted(RANDOM_MODELS))}) "
            "nor a directory"
        )
    return detect_layout(directory).variant


def is_hub_model(model: str) -> bool:
    """The setting names a model that comes from the Hugging Face hub (english, multilingual, turbo, nano)."""
    return model.strip().lower() in MODEL_ALIASES


def checkpoint_stage(model: str) -> str:
    """What finding `model`'s files involves, as /health names the loading stage (a first start downloads or writes
    them, later ones find them in the cache)."""
    name = model.strip().lower()
    if name in RANDOM_MODELS:
        return "writing the random-weight checkpoint (first start) or finding it in the cache"
    if name in MODEL_ALIASES:
        return "downloading the weights from the Hugging Face hub (first start) or finding them in its cache"
    return "checking the checkpoint directory"


def variants_of(models: list[str]) -> list[Variant | CheckpointError]:
    """Each model's variant, or why it has none: not a model, or a second one of a variant already named (a server
    serves each variant once, as chatterbox-<variant>)."""
    first: dict[str, str] = {}
    results: list[Variant | CheckpointError] = []
    for model in models:
        try:
            variant = variant_of(model)
        except CheckpointError as exc:
            results.append(exc)
            continue
        if variant in first:
            results.append(CheckpointError(
                f"{model} is a second {variant} model (after {first[variant]}); each variant loads once"
            ))  # fmt: skip
            continue
        first[variant] = model
        results.append(variant)
    return results


def resolve_model(
    model: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    server_cache_dir: Path | None = None,
) -> tuple[Path, CheckpointLayout]:
    """Turn a model setting (english | multilingual | a directory | random-tiny...) into a complete checkpoint
    directory. `cache_dir` is the Hugging Face hub's cache; `server_cache_dir` the server's (where random-tiny
    checkpoints are written; None: the settings')."""
    name = model.strip().lower()
    if name in RANDOM_MODELS:
        # Test and demo code, imported only here: loading any other model never imports it.
        from ..random_checkpoint import ensure_random_tiny

        variant = RANDOM_MODELS[name]
        return ensure_random_tiny(variant, random_checkpoint_dir(variant, server_cache_dir)), LAYOUTS[variant]
    alias = MODEL_ALIASES.get(name)
    if alias is not None:
        directory = download(alias, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        return directory, LAYOUTS[alias]
    directory = Path(model).expanduser()
    layout = LAYOUTS[variant_of(model)]
    check_complete(directory, layout)
    return directory, layout
