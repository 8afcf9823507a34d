"""The load order of a model (`loading.load_parts`): T3's engine starts on a thread of its own first, and S3Gen,
the voice encoder and the text front end load while it starts; an error on either side fails the load with its own
message, and an engine that profiles the GPU's free memory still waits for the parts. Tiny English checkpoint,
CPU; one real vLLM engine start (~45 s)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from chatterbox_vllm.checkpoint.weights import CheckpointError
from chatterbox_vllm.engine.vllm_engine import VLLMOptions
from chatterbox_vllm.loading import waits_for_parts
from chatterbox_vllm.tts import ChatterboxTTS


def test_the_vllm_engine_starts_while_the_other_parts_load(
    english_tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatterbox_vllm")
    began = time.perf_counter()
    tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="vllm",
                                   vllm_options=VLLMOptions(max_model_len=512, max_num_seqs=4, dtype="float32"))  # fmt: skip
    wall = time.perf_counter() - began
    try:
        records = [r for r in caplog.records if r.name.startswith("chatterbox_vllm")]
        parts = next(i for i, r in enumerate(records) if "the T3 engine starting since" in r.getMessage())
        engine = next(i for i, r in enumerate(records) if r.getMessage().startswith("T3 engine: vLLM"))
        # the parts were loaded while vLLM's engine was still starting, on its own thread
        assert parts < engine and records[engine].threadName == "t3-engine-start"
        phases = tts.startup_phases
        # overlapped: the two phases add up to more than the whole load took
        assert phases["load_s3gen_voice_encoder"] + phases["t3_engine"] > wall, (phases, wall)
        assert "t3_engine_waited_for_parts" not in phases  # a CPU: nothing profiles a GPU
        assert tts.generate("Hi.", max_new_tokens=8).size > 0  # the engine serves
    finally:
        tts.close()


def test_an_engine_that_fails_fails_the_load_with_its_own_error(english_tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(english_tiny_checkpoint, broken)
    weights = broken / "t3_cfg.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as failed:
        ChatterboxTTS.from_local(broken, device="cpu", engine="torch")
    assert "t3_cfg.safetensors" in str(failed.value)
    assert not [t for t in threading.enumerate() if t.name == "t3-engine-start"]


def test_parts_that_fail_fail_the_load_once_the_engine_start_ended(half_written_checkpoint: Path) -> None:
    """S3Gen's weights cut short: the load fails with S3Gen's error, and the engine started beside is not left
    running (its thread waited for and its engine shut down)."""
    with pytest.raises(CheckpointError) as failed:
        ChatterboxTTS.from_local(half_written_checkpoint, device="cpu", engine="torch")
    assert "s3gen.safetensors" in str(failed.value)
    assert not [t for t in threading.enumerate() if t.name == "t3-engine-start"]


def test_on_a_gpu_vllm_waits_for_the_parts_unless_its_kv_cache_was_planned_beside_s3gen() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert waits_for_parts("vllm", cuda, planned_kv_cache=False)  # its profile or start check must see the parts
    assert not waits_for_parts("vllm", cuda, planned_kv_cache=True)  # the free memory was checked for all of it
    assert not waits_for_parts("vllm", cpu, planned_kv_cache=False)  # a CPU's KV cache is its own setting
    assert not waits_for_parts("torch", cuda, planned_kv_cache=False)
