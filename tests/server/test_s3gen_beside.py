"""S3Gen's worker process started while T3's engine starts (`server/s3gen_beside.py`).

First the decision, from the facts of a host (an H200-sized GPU, a small card, a CPU, a vLLM without
kv_cache_memory_bytes) and vLLM's engine arguments with and without a fixed KV cache. Then the real load on the tiny
English checkpoint (CPU, the PyTorch T3 engine so that no vLLM engine starts for it): the S3Gen process starts
before T3's engine has loaded, the model is ready only once the process and voice analysis warmed up, and a T3
that fails to load fails the model and stops the process started beside it. `test_s3gen_process.py`'s
`chatterbox-vllm serve` test checks the same order with vLLM's engine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from test_s3gen_process import alive
from vllm.engine.arg_utils import AsyncEngineArgs

from chatterbox_vllm.engine.vllm_engine import VLLMOptions, engine_kwargs, takes_kv_cache_bytes
from chatterbox_vllm.models.t3.config import T3Config
from chatterbox_vllm.server.model_loader import ModelLoader, model_states
from chatterbox_vllm.server.registry import ModelRegistry
from chatterbox_vllm.server.s3gen_beside import MARGIN_GIB, StartFacts, start_order
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.vram_plan import model_need, t3_kv_bytes_per_token, t3_kv_cache_bytes

H200 = StartFacts("cuda", "vllm", "process", 1, free_gib=139.0)


def high() -> Settings:
    return Settings(preset="high")


# ------------------------------------------------------------------------------------------------ the decision
def test_a_large_gpu_starts_s3gen_beside_with_the_kv_cache_fixed() -> None:
    order = start_order(high(), "english", 10.0, H200)
    assert order.beside
    assert order.kv_cache_memory_bytes == t3_kv_cache_bytes("english", 10.0, high().limits().max_model_len)
    # what the 10 GiB budget holds: ~37,700 tokens of the Llama T3, where vLLM's profile found ~38,000 on an H200
    tokens = order.kv_cache_memory_bytes // t3_kv_bytes_per_token(T3Config.for_variant("english"))
    assert 36_000 < tokens < 39_000


def test_the_engine_setting_auto_counts_as_vllm_on_a_gpu() -> None:
    """Whether vLLM would run is not asked before S3Gen starts (importing vLLM takes seconds): on a GPU anything
    but the PyTorch engine is planned with the KV cache fixed."""
    auto = start_order(high(), "english", 10.0, StartFacts("cuda", "auto", "process", 1, free_gib=139.0))
    assert auto.beside and auto.kv_cache_memory_bytes == start_order(high(), "english", 10.0, H200).kv_cache_memory_bytes


def test_a_budget_that_holds_no_request_is_not_fixed() -> None:
    assert t3_kv_cache_bytes("english", 1.0, 3072) is None
    order = start_order(high(), "english", 1.0, H200)
    assert not order.beside and "too little KV cache" in order.reason


def test_a_gpu_without_room_for_both_starts_one_after_the_other() -> None:
    need = model_need("english", "english", "high", 3072, "process")
    just_enough = 10.0 + need.pipeline_gib + MARGIN_GIB
    assert start_order(
        high(), "english", 10.0, StartFacts("cuda", "vllm", "process", 1, free_gib=just_enough)
    ).beside
    short = start_order(
        high(), "english", 10.0, StartFacts("cuda", "vllm", "process", 1, free_gib=just_enough - 0.1)
    )
    assert not short.beside and "free memory" in short.reason


@pytest.mark.parametrize(
    ("facts", "settings", "why"),
    [
        (StartFacts("cuda", "vllm", "thread", 1, free_gib=139.0), Settings(preset="low"), "thread layout"),
        (StartFacts("cuda", "vllm", "process", 2, free_gib=139.0), high(), "several S3Gen workers"),
        (StartFacts("cuda", "vllm", "process", 1, t3_engines=2, free_gib=139.0), high(), "data parallel"),
        (H200, Settings(preset="high", s3gen_start_beside_t3=False), "START_BESIDE_T3"),
    ],
)  # fmt: skip
def test_where_it_is_not_safe_the_order_stays_serial(facts: StartFacts, settings: Settings, why: str) -> None:
    order = start_order(settings, "english", settings.limits().gpu_memory_gib, facts)
    assert not order.beside and order.kv_cache_memory_bytes is None
    assert why in order.reason


def test_without_a_device_wide_profile_nothing_is_fixed() -> None:
    """A CPU's KV cache is fixed already (VLLM_CPU_KVCACHE_SPACE); the PyTorch engine profiles nothing."""
    for facts in (
        StartFacts("cpu", "vllm", "process", 1),
        StartFacts("cuda", "torch", "process", 1, free_gib=9.0),
    ):
        order = start_order(high(), "english", 10.0, facts)
        assert order.beside and order.kv_cache_memory_bytes is None


# ------------------------------------------------------------------------------------------- vLLM's arguments
def test_the_fixed_kv_cache_reaches_vllm_and_is_absent_otherwise(tmp_path: Path) -> None:
    assert takes_kv_cache_bytes()  # the installed vLLM (0.32) has it
    fixed = engine_kwargs(tmp_path, VLLMOptions(kv_cache_memory_bytes=3 * 2**30))
    assert AsyncEngineArgs(**fixed).kv_cache_memory_bytes == 3 * 2**30
    profiled = engine_kwargs(tmp_path, VLLMOptions())
    assert "kv_cache_memory_bytes" not in profiled
    assert AsyncEngineArgs(**profiled).kv_cache_memory_bytes is None


def test_a_cpu_engine_is_never_given_a_kv_size() -> None:
    import torch

    options = VLLMOptions.from_limits(high().limits(), torch.device("cpu"), kv_cache_memory_bytes=2**30)
    assert options.kv_cache_memory_bytes is None


# --------------------------------------------------------------------------------------------- the real load
def load(settings: Settings) -> ModelRegistry:
    served = ModelRegistry(model_states(settings))
    loader = ModelLoader(settings, served)
    asyncio.run(loader.load())
    return served


def process_settings(model: Path, tmp_path: Path) -> Settings:
    return Settings(model=str(model), device="cpu", engine="torch", s3gen_layout="process", max_new_tokens=40,
                    voices_dir=str(tmp_path / "voices"), cache_dir=str(tmp_path / "cache"))  # fmt: skip


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def index_of(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def test_the_s3gen_process_starts_before_t3_and_the_model_waits_for_both(
    english_tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatterbox_vllm")
    served = load(process_settings(english_tiny_checkpoint, tmp_path))
    state = served.default
    assert state.loaded is not None, state.error
    try:
        lines = messages(caplog)
        started = index_of(lines, r"S3Gen process started beside the T3 engine")
        assert started < index_of(lines, r"loaded english Chatterbox from")  # logged once T3's engine is built
        assert "fixed" not in lines[started]  # a CPU: no KV cache size given
        phases = state.loaded.tts.startup_phases
        assert {"t3_engine", "s3gen_process_load"} <= phases.keys()  # the process's phases joined the model's
        assert state.loaded.tts.voices.warm_up_seconds is not None  # voice analysis warmed up before ready
        health = state.loaded.synthesizer.s3gen_health()
        assert health is not None and health["alive"]
        # voice analysis runs on the thread the synthesizer gave the process once the model had loaded
        clip = tmp_path / "clip.wav"
        t = np.arange(5 * 24_000) / 24_000
        soundfile.write(clip, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 24_000)
        conds = state.loaded.synthesizer.clip_conditionals(clip)
        assert conds.gen["embedding"].numel() > 0
    finally:
        state.loaded.synthesizer.close()


def test_a_t3_that_fails_to_load_stops_the_process_started_beside_it(
    english_tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(english_tiny_checkpoint, broken)
    weights = broken / "t3_cfg.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    caplog.set_level(logging.INFO, logger="chatterbox_vllm")
    served = load(process_settings(broken, tmp_path))
    assert served.default.status == "error" and served.default.error
    lines = messages(caplog)
    pid = int(
        re.search(r"S3Gen process started \(pid (\d+)\)", lines[index_of(lines, r"S3Gen process started \(pid")])[1]
    )
    assert not alive(pid)


def test_a_vllm_that_cannot_take_the_kv_size_starts_once_s3gen_is_ready(
    english_tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `kv_cache_bytes` answers load_parts's engine thread, with a real S3Gen process: no size off a GPU or with the PyTorch
    engine, the planned size for a vLLM that takes it, and for an older one (simulated: the installed vLLM has it)
    none, once the S3Gen process is ready."""
    import torch

    from chatterbox_vllm.server import s3gen_beside
    from chatterbox_vllm.server.s3gen_beside import S3GenBeside, StartOrder
    from chatterbox_vllm.tts import ChatterboxTTS

    tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")
    beside = S3GenBeside(process_settings(english_tiny_checkpoint, tmp_path), "chatterbox-english",
                         StartOrder(True, kv_cache_memory_bytes=2**30))  # fmt: skip
    assert tts.vocoder_spec is not None
    beside.start(tts.vocoder_spec)
    try:
        beside.voices_loaded(tts.voices)
        assert beside.kv_cache_bytes("torch", torch.device("cuda")) is None
        assert beside.kv_cache_bytes("vllm", torch.device("cpu")) is None
        assert beside.kv_cache_bytes("vllm", torch.device("cuda")) == 2**30
        monkeypatch.setattr(s3gen_beside, "takes_kv_cache_bytes", lambda: False)
        assert beside.kv_cache_bytes("vllm", torch.device("cuda")) is None
        assert beside.process is not None and beside.process.ready.done()  # it waited for the process
        assert beside.voice_warm_up is not None and beside.voice_warm_up.result(timeout=120) is None
    finally:
        process, _ = beside.take()
        process.shutdown()
        tts.close()
