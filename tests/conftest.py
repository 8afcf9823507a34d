"""Shared test fixtures: seed-0 random checkpoints and the live server of the docs tests; session settings.

Plain helpers (paths, golden fixtures, checkpoints, server processes) are in tests/support, fixtures here and in
the plugins listed in `pytest_plugins`: test modules import helpers, never this file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("leases")  # a plugin (pytest_plugins below) this module also imports
from leases import lease  # noqa: E402
from support.checkpoints import FullCheckpoint, seed0_checkpoint
from support.processes import free_port, running_server

# The parity metric (tests/parity.py): its thread-count setting and its --parity-metrics report; shared heavy
# resources closed after their last module (tests/leases.py); the server tests' engine and servers
# (tests/server_fixtures.py).
pytest_plugins = ["parity", "leases", "server_fixtures"]

# vLLM on CPU: a small KV cache for the tiny test models (its default is sized for real ones).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# A server started without CHATTERBOX_VOICES_DIR creates `voices` in the user data directory: in tests, never the
# real one (platformdirs reads XDG_DATA_HOME on Linux; subprocesses inherit it).
_TEST_DATA_HOME = tempfile.mkdtemp(prefix="chatterbox-test-data-")
os.environ["XDG_DATA_HOME"] = _TEST_DATA_HOME
atexit.register(shutil.rmtree, _TEST_DATA_HOME, ignore_errors=True)


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


@pytest.fixture(scope="module")
def live_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `chatterbox-vllm serve` on random-tiny with random-tiny-turbo beside it (vLLM CPU build, two
    engines), as users start it; its base URL. One process for the docs and examples tests (tests/docs), stopped
    after the last of them."""

    def start() -> contextlib.AbstractContextManager[str]:
        tmp = tmp_path_factory.mktemp("examples-server")
        port = free_port()
        env = {**os.environ, "CHATTERBOX_MODEL": "random-tiny", "CHATTERBOX_EXTRA_MODELS": "random-tiny-turbo",
               "CHATTERBOX_CACHE_DIR": str(tmp / "cache"),
               "CHATTERBOX_MAX_NEW_TOKENS": "40", "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "512",
               "CHATTERBOX_HOST": "127.0.0.1", "CHATTERBOX_PORT": str(port), "CHATTERBOX_VOICES_DIR": str(tmp / "voices"),
               "CHATTERBOX_DATA_DIR": str(tmp / "data")}  # fmt: skip
        return running_server([sys.executable, "-m", "chatterbox_vllm.cli", "serve"], env, port, tmp / "server.log")

    with lease(request, "live_server", start) as url:
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests (minutes of full-size decoding on a CPU) run only when asked for with `-m slow`."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
