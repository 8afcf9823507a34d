"""S3Gen's start-up graphs (tiny English checkpoint, CPU): which one-row CUDA graphs the warm-up captures for a
warm-up token budget, and that the rest are queued for the background capturer only once the server is ready.
CUDA graphs need a GPU: `EagerGraphs` stands in for the capture itself (tests/support/eager_graphs.py); the
warm-up, the server's start and the capturer thread are the real ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from support.eager_graphs import EagerGraphs

from chatterbox_vllm.models.s3gen.cfm_graphs import start_lengths
from chatterbox_vllm.server.app import create_app
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import ChatterboxTTS


@pytest.fixture
def tts(english_tiny_checkpoint: Path):
    model = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")
    yield model
    model.close()


def eager_graphs(tts: ChatterboxTTS) -> EagerGraphs:
    """The flow's graphs as a GPU enables them, with the capture stood in for."""
    decoder = tts.s3gen.flow.decoder
    decoder.graphs = EagerGraphs(decoder.solve, channels=80, n_timesteps=tts.config.s3gen.flow.n_timesteps)
    return decoder.graphs


@pytest.mark.parametrize(("budget", "lengths"), [(300, [64, 128, 256, 512, 1024, 1152]), (0, [64, 128, 256, 512])])
def test_the_warm_up_captures_powers_of_two_up_to_its_budget_and_queues_the_rest_later(
    tts: ChatterboxTTS, budget: int, lengths: list[int]
) -> None:
    """CHATTERBOX_S3GEN_WARM_UP_TOKENS=300 (the default): pieces up to 300 tokens after a 250-token prompt (1,100
    frames) are covered by 6 graphs at start; the other 12 lengths once asked for later. 0: up to the prompt's."""
    graphs = eager_graphs(tts)
    tts.s3gen_warm_up_tokens = budget
    assert tts.warm_up_s3gen(1000) == len(lengths)
    assert graphs.buckets() == [(1, length) for length in lengths]
    assert "s3gen_graphs" in tts.startup_phases
    assert graphs.stats()["queued"] == 0  # nothing before the server is ready
    graphs.release.set()
    later = start_lengths(2 * (250 + budget), 64)[1]
    assert tts.queue_later_s3gen_graphs() == len(later)
    assert graphs.wait_idle(timeout=60)
    assert sorted(graphs.buckets()) == [(1, n) for n in range(64, lengths[-1] + 1, 64)]
    assert graphs.stats()["captured_background"] == len(later)
    graphs.close()


def test_the_server_queues_the_rest_once_its_model_is_ready(
    tts: ChatterboxTTS, english_tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The app's start (thread layout): S3Gen's warm-up captures the start lengths before the model is ready, and
    the left-out lengths are captured by the background thread after it is."""
    graphs = eager_graphs(tts)
    tts.s3gen_warm_up_tokens = 300  # as loading from the settings sets it (a model built in memory has none)
    settings = Settings(model=str(english_tiny_checkpoint), device="cpu",
                        engine="torch", s3gen_layout="thread", max_new_tokens=1000,
                        voices_dir=str(tmp_path / "voices"), cache_dir=str(tmp_path / "cache"))  # fmt: skip
    app = create_app(settings, tts)
    ready_with: list[list[tuple[int, int]]] = []
    original = app.state.loader.queue_later_graphs

    def queue_later_graphs() -> None:  # what was captured when the server queued the rest
        assert app.state.model.loaded is not None  # the model is ready already
        ready_with.append(graphs.buckets())
        original()

    app.state.loader.queue_later_graphs = queue_later_graphs

    async def start_and_stop() -> None:
        async with app.router.lifespan_context(app):
            graphs.release.set()
            assert graphs.wait_idle(timeout=60)

    asyncio.run(start_and_stop())
    now, later = start_lengths(2 * (250 + 300), 64)
    assert ready_with == [[(1, n) for n in now]]
    background = [key for key, thread in graphs.recorded if thread == "cfm-graph-capture"]
    assert sorted(background) == [(1, n) for n in later]
    graphs.close()
