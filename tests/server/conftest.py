"""Servers under test: uvicorn on loopback ports over the tiny English checkpoint, all sharing one vLLM engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_utils import Server, make_settings, start_server, stop_server

from chatterbox_vllm.engine.vllm_engine import VLLMOptions
from chatterbox_vllm.tts import ChatterboxTTS


@pytest.fixture(scope="session")
def english_tts(english_tiny_checkpoint: Path) -> Iterator[ChatterboxTTS]:
    tts = ChatterboxTTS.from_local(
        english_tiny_checkpoint,
        device="cpu",
        engine="vllm",
        vllm_options=VLLMOptions(max_model_len=512, max_num_seqs=16, dtype="float32"),
    )
    yield tts
    tts.close()


@pytest.fixture(scope="module")
def server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(make_settings(tmp_path_factory.mktemp("open")), english_tts)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def keyed_server(english_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(make_settings(tmp_path_factory.mktemp("keyed"), api_key="sk-test-123"), english_tts)
    yield running
    stop_server(running)
