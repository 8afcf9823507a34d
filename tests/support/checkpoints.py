"""Seed-0 random checkpoints, made by our generator once and reused across runs (`CHATTERBOX_TEST_CHECKPOINTS`,
default `<repo>/.cache/checkpoints`)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from support.paths import REPO_ROOT


def checkpoint_cache_dir() -> Path:
    """Where the seed-0 checkpoints are cached."""
    return Path(os.environ.get("CHATTERBOX_TEST_CHECKPOINTS", REPO_ROOT / ".cache" / "checkpoints"))


def seed0_checkpoint(variant: str, size: str = "tiny") -> Path:
    """Directory of the complete seed-0 random checkpoint of `variant`, made once by our generator and reused.

    Meant for tiny checkpoints; full-size tests ask `full_checkpoint` for the weight files they read."""
    out = checkpoint_cache_dir() / f"{variant}-{size}-seed0"
    marker = out / ".complete"
    if not marker.is_file():
        from chatterbox_vllm.random_checkpoint import write_random_checkpoint

        # No speaking pace: the tests count on random pieces running to max_new_tokens (random-tiny has one).
        write_random_checkpoint(variant=variant, size=size, seed=0, out=out, speaking_pace=False)
        marker.write_text("ok\n")
    return out


# A full-size checkpoint is 3.2 GB per variant. Both at once do not fit every CI machine's disk, so the big weight
# files are made on demand and the least recently asked-for ones are deleted while free space is short.
FULL_SIZE_RESERVE_BYTES = int(float(os.environ.get("CHATTERBOX_TEST_DISK_RESERVE_GIB", "1.0")) * 2**30)
BIG_FILE_BYTES = 64 * 2**20
_last_asked: dict[Path, float] = {}


@functools.cache
def _full_weight_bytes(variant: str) -> dict[str, int]:
    """Weight file -> bytes of its tensors (the specs come from modules built on the meta device: done once)."""
    import math

    from chatterbox_vllm.random_checkpoint import checkpoint_specs

    return {
        file: sum(math.prod(s.shape) * s.dtype.itemsize for s in specs)
        for file, specs in checkpoint_specs(variant, "full").items()
    }


def _evict_for(needed_bytes: int, keep: set[Path]) -> None:
    """Delete cached big full-size weight files (least recently asked-for first) until `needed_bytes` plus the
    reserve fit on the disk; files in `keep` stay."""
    import shutil

    root = checkpoint_cache_dir()
    candidates = [
        p
        for p in root.glob("*-full-seed0/*")
        if p.is_file() and p not in keep and p.stat().st_size >= BIG_FILE_BYTES
    ]
    candidates.sort(key=lambda p: (_last_asked.get(p, 0.0), p.stat().st_mtime))
    while candidates and shutil.disk_usage(root).free < needed_bytes + FULL_SIZE_RESERVE_BYTES:
        candidates.pop(0).unlink(missing_ok=True)


def full_checkpoint(variant: str, *weights: str) -> Path:
    """Directory of the seed-0 full-size checkpoint of `variant` holding its small files and the weight files named
    in `weights`. Load what you need right away: a later call may delete big files that were not asked for."""
    from chatterbox_vllm.checkpoint.layout import LAYOUTS
    from chatterbox_vllm.random_checkpoint import write_random_checkpoint

    out = checkpoint_cache_dir() / f"{variant}-full-seed0"
    sizes = _full_weight_bytes(variant)
    small = {file for file, size in sizes.items() if size < BIG_FILE_BYTES}
    wanted = set(weights) | small
    missing = sorted(file for file in wanted if not (out / file).is_file())
    if missing or not (out / LAYOUTS[variant].conds).is_file():
        _evict_for(sum(sizes[file] for file in missing), keep={out / file for file in wanted})
        write_random_checkpoint(variant, "full", 0, out, weights=missing)
    now = time.monotonic()
    for file in wanted:
        _last_asked[out / file] = now
    return out


class FullCheckpoint:
    """`fixture / "file"` names a file of a full-size checkpoint and makes sure it exists at that moment."""

    def __init__(self, variant: str) -> None:
        self.variant = variant

    def __truediv__(self, name: str) -> Path:
        weights = _full_weight_bytes(self.variant)
        return full_checkpoint(self.variant, *([name] if name in weights else [])) / name
