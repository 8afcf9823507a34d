"""A pytest plugin (listed in tests/conftest.py's `pytest_plugins`) with the server tests' fixtures: the tiny
English model on one vLLM engine, and an open and a keyed server over it. A plugin, not `from server_utils import
english_tts` in each module: a fixture imported by name is a separate fixture in every module that imports it.

The server code is imported inside the fixtures, so a run without server tests does not pay for importing it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from leases import lease

if TYPE_CHECKING:
    from support.servers import Server

    from chatterbox_vllm.tts import ChatterboxTTS


@pytest.fixture(scope="module")
def english_tts(request: pytest.FixtureRequest, english_tiny_checkpoint: Path) -> Iterator[ChatterboxTTS]:
    """The tiny English model on one vLLM engine, shared by every server test module that uses it and closed after
    the last of them (tests/leases.py)."""
    from chatterbox_vllm.engine.vllm_engine import VLLMOptions
    from chatterbox_vllm.tts import ChatterboxTTS

    @contextlib.contextmanager
    def load() -> Iterator[ChatterboxTTS]:
        tts = ChatterboxTTS.from_local(
            english_tiny_checkpoint,
            device="cpu",
            engine="vllm",
            vllm_options=VLLMOptions(max_model_len=512, max_num_seqs=16, dtype="float32"),
        )
        try:
            yield tts
        finally:
            tts.close()

    with lease(request, "english_tts", load) as tts:
        yield tts


@pytest.fixture(scope="module")
def server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app over `english_tts`, no API key."""
    from support.servers import make_settings, start_server, stop_server

    running = start_server(make_settings(tmp_path_factory.mktemp("open")), english_tts)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def keyed_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app over `english_tts`, with the API key `sk-test-123`."""
    from support.servers import make_settings, start_server, stop_server

    running = start_server(make_settings(tmp_path_factory.mktemp("keyed"), api_key="sk-test-123"), english_tts)
    yield running
    stop_server(running)
