"""Shared test fixtures: golden-fixture directories, manifests, and seed-0 random checkpoints.

Golden fixtures come from the reference implementation run by `tools/reference` (ours, in tests/fixtures/golden)
and, when the shared reference kit sits beside the repository, from the kit as an independent cross-check.
Both use the same tensor names, so parity tests run over every directory that exists.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

pytest.register_assert_rewrite("leases")  # a plugin (below) this module also imports
from leases import lease  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# The parity metric (tests/parity.py): its thread-count setting and its --parity-metrics report; shared heavy
# resources closed after their last module (tests/leases.py).
pytest_plugins = ["parity", "leases"]

# vLLM on CPU: a small KV cache for the tiny test models (its default is sized for real ones).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# A server started without CHATTERBOX_VOICES_DIR creates `voices` in the user data directory: in tests, never the
# real one (platformdirs reads XDG_DATA_HOME on Linux; subprocesses inherit it).
_TEST_DATA_HOME = tempfile.mkdtemp(prefix="chatterbox-test-data-")
os.environ["XDG_DATA_HOME"] = _TEST_DATA_HOME
atexit.register(shutil.rmtree, _TEST_DATA_HOME, ignore_errors=True)
OUR_GOLDEN = REPO_ROOT / "tests" / "fixtures" / "golden"
KIT_ROOT = REPO_ROOT.parent / "shared" / "reference"
KIT_GOLDEN = KIT_ROOT / "golden"
OUR_MANIFESTS = REPO_ROOT / "tools" / "reference" / "manifests"
KIT_MANIFESTS = KIT_ROOT / "manifests"


def golden_dirs() -> list[Path]:
    """Every golden-fixture directory present: ours first, then the shared kit's."""
    return [d for d in (OUR_GOLDEN, KIT_GOLDEN) if (d / "summary.json").is_file() or any(d.glob("*.json"))]


def golden_params() -> list:
    """`pytest.mark.parametrize` values over golden directories, with readable ids."""
    dirs = golden_dirs()
    if not dirs:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no golden fixtures present"))]
    return [pytest.param(d, id=golden_id(d)) for d in dirs]


def golden_id(directory: Path) -> str:
    """'ours' (tests/fixtures/golden) or 'kit' (the shared reference kit): test ids and parity-metric cases."""
    return "ours" if directory == OUR_GOLDEN else "kit"


def manifest_path(name: str) -> Path:
    """Manifest JSON of a published file (e.g. 't3_cfg.safetensors.json'): ours if committed, else the kit's."""
    for root in (OUR_MANIFESTS, KIT_MANIFESTS):
        if (root / name).is_file():
            return root / name
    pytest.skip(f"manifest {name} not present")


def checkpoint_cache_dir() -> Path:
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


@pytest.fixture(scope="session")
def english_full_checkpoint() -> FullCheckpoint:
    return FullCheckpoint("english")


@pytest.fixture(scope="session")
def multilingual_full_checkpoint() -> FullCheckpoint:
    return FullCheckpoint("multilingual")


@pytest.fixture(scope="session")
def english_tiny_checkpoint() -> Path:
    return seed0_checkpoint("english", "tiny")


@pytest.fixture
def half_written_checkpoint(english_tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny English checkpoint with its S3Gen weights cut half way, as an interrupted download leaves them."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(english_tiny_checkpoint, broken)
    weights = broken / "s3gen.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return broken


@pytest.fixture(scope="session")
def multilingual_tiny_checkpoint() -> Path:
    return seed0_checkpoint("multilingual", "tiny")


@pytest.fixture(scope="session")
def turbo_tiny_checkpoint() -> Path:
    return seed0_checkpoint("turbo", "tiny")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(
    args: list[str],
    env: dict[str, str],
    port: int,
    log_path: Path,
    ready_timeout: float = 300,
    while_loading: Callable[[str, httpx.Response], None] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a server process as a user would, wait until /health answers 200, yield its URL and process; stop
    it after (SIGTERM, then SIGKILL after a minute) unless the test already did. `while_loading(url, health)`
    is called for each other answer of /health on the way."""
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                assert server.poll() is None, log_path.read_text()[-3000:]
                try:
                    health = httpx.get(f"{url}/health", timeout=2)
                    if health.status_code == 200:
                        break
                    if while_loading is not None:
                        while_loading(url, health)
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(1)
            yield url, server
        finally:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()


@contextlib.contextmanager
def running_server(args: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[str]:
    """`server_process`, yielding only the URL."""
    with server_process(args, env, port, log_path) as (url, _):
        yield url


@pytest.fixture(scope="module")
def live_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `chatterbox-vllm serve` on random-tiny with random-tiny-turbo beside it (vLLM CPU build, two
    engines), as users start it; its base URL. One process for the docs and examples tests (tests/docs), stopped
    after the last of them."""

    def start() -> contextlib.AbstractContextManager[str]:
        tmp = tmp_path_factory.mktemp("examples-server")
        port = _free_port()
        env = {**os.environ, "CHATTERBOX_MODEL": "random-tiny", "CHATTERBOX_EXTRA_MODELS": "random-tiny-turbo",
               "CHATTERBOX_CACHE_DIR": str(tmp / "cache"),
               "CHATTERBOX_MAX_NEW_TOKENS": "40", "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "512",
               "CHATTERBOX_HOST": "127.0.0.1", "CHATTERBOX_PORT": str(port), "CHATTERBOX_VOICES_DIR": str(tmp / "voices")}  # fmt: skip
        return running_server([sys.executable, "-m", "chatterbox_vllm.cli", "serve"], env, port, tmp / "server.log")

    with lease(request, "live_server", start) as url:
        yield url


def assert_same_conditionals(got, want) -> None:
    """Two voices' conditionals (`Conditionals`) agree: token tensors exactly, float tensors within 1e-5 of their
    own scale."""
    import torch

    pairs = {"speaker_emb": (got.t3.speaker_emb, want.t3.speaker_emb),
             "cond_prompt_speech_tokens": (got.t3.cond_prompt_speech_tokens, want.t3.cond_prompt_speech_tokens)}  # fmt: skip
    pairs.update({key: (got.gen[key], want.gen[key]) for key in ("prompt_token", "prompt_token_len", "prompt_feat",
                                                                   "embedding")})  # fmt: skip
    for key, (a, b) in pairs.items():
        assert a.shape == b.shape and a.dtype == b.dtype, key
        if a.is_floating_point():
            scale = float(b.abs().max())
            assert scale > 0, key
            assert float((a - b).abs().max()) <= 1e-5 * scale, key
        else:
            assert torch.equal(a, b), key
    assert got.gen["prompt_feat_len"] is None and float(got.t3.emotion_adv.reshape(-1)[0]) == 0.5


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests (minutes of full-size decoding on a CPU) run only when asked for with `-m slow`."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
