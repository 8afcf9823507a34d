"""CHATTERBOX_* settings: defaults, presets, overrides by environment and .env, validation, GiB -> fraction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from chatterbox_vllm.engine.vllm_engine import VLLMOptions
from chatterbox_vllm.settings import PRESETS, EngineLimits, Settings, gpu_memory_utilization


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CHATTERBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults() -> None:
    s = Settings()
    assert (s.model, s.engine, s.preset, s.device, s.host, s.port) == ("english", "auto", "medium", "auto", "0.0.0.0", 4123)
    assert s.limits() == PRESETS["medium"]


@pytest.mark.parametrize("preset", ["low", "medium", "high"])
def test_each_preset_resolves_to_its_table(monkeypatch: pytest.MonkeyPatch, preset: str) -> None:
    monkeypatch.setenv("CHATTERBOX_PRESET", preset)
    assert Settings().limits() == PRESETS[preset]


def test_presets_grow_with_the_card() -> None:
    low, medium, high = PRESETS["low"], PRESETS["medium"], PRESETS["high"]
    assert low.gpu_memory_gib < medium.gpu_memory_gib < high.gpu_memory_gib
    assert low.max_batch_size < medium.max_batch_size < high.max_batch_size
    assert low.enforce_eager and not high.enforce_eager  # CUDA graphs cost memory a small card lacks


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("CHATTERBOX_GPU_MEMORY_GIB", "2.5", "gpu_memory_gib", 2.5),
        ("CHATTERBOX_MAX_BATCH_SIZE", "3", "max_batch_size", 3),
        ("CHATTERBOX_MAX_MODEL_LEN", "1024", "max_model_len", 1024),
        ("CHATTERBOX_ENFORCE_EAGER", "true", "enforce_eager", True),
        ("CHATTERBOX_DTYPE", "float16", "dtype", "float16"),
    ],
)
def test_an_explicit_limit_overrides_only_its_preset_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv("CHATTERBOX_PRESET", "high")
    monkeypatch.setenv(variable, value)
    limits = Settings().limits()
    assert getattr(limits, field) == expected
    preset = PRESETS["high"]
    for other in ("gpu_memory_gib", "max_batch_size", "max_model_len", "enforce_eager", "dtype"):
        if other != field:
            assert getattr(limits, other) == getattr(preset, other)


def test_server_and_model_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERBOX_MODEL", "/models/mtl")
    monkeypatch.setenv("CHATTERBOX_HOST", "127.0.0.1")
    monkeypatch.setenv("CHATTERBOX_PORT", "8080")
    monkeypatch.setenv("CHATTERBOX_ENGINE", "torch")
    s = Settings()
    assert (s.model, s.host, s.port, s.engine) == ("/models/mtl", "127.0.0.1", 8080, "torch")


@pytest.mark.parametrize(("text", "value"), [("false", False), ("0", False), ("1", True), ("TRUE", True)])
def test_boolean_parsing(monkeypatch: pytest.MonkeyPatch, text: str, value: bool) -> None:
    monkeypatch.setenv("CHATTERBOX_ENFORCE_EAGER", text)
    assert Settings().limits().enforce_eager is value


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("CHATTERBOX_PRESET", "huge", "preset"),
        ("CHATTERBOX_PORT", "0", "port"),
        ("CHATTERBOX_PORT", "70000", "port"),
        ("CHATTERBOX_MAX_BATCH_SIZE", "0", "max_batch_size"),
        ("CHATTERBOX_GPU_MEMORY_GIB", "-1", "gpu_memory_gib"),
        ("CHATTERBOX_MAX_MODEL_LEN", "100", "max_model_len"),
        ("CHATTERBOX_ENGINE", "tensorrt", "engine"),
        ("CHATTERBOX_DTYPE", "int8", "dtype"),
    ],
)
def test_invalid_values_name_the_field(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert field in str(excinfo.value)


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("CHATTERBOX_PRESET=low\nCHATTERBOX_PORT=5000\n")
    s = Settings()
    assert s.preset == "low" and s.port == 5000
    monkeypatch.setenv("CHATTERBOX_PORT", "6000")  # the environment beats the file
    assert Settings().port == 6000


def test_gpu_memory_utilization() -> None:
    assert gpu_memory_utilization(3, 80 * 2**30) == 0.0375
    assert gpu_memory_utilization(5, 12 * 2**30) == 0.4166  # rounded down: never above the budget
    with pytest.raises(ValueError, match="does not fit"):
        gpu_memory_utilization(10, 8 * 2**30)
    with pytest.raises(ValueError, match="too small"):
        gpu_memory_utilization(0.1, 80 * 2**30)


def test_vllm_options_from_limits_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    limits = EngineLimits(gpu_memory_gib=2.5, max_batch_size=6, max_model_len=1024, enforce_eager=True, dtype="bfloat16")
    options = VLLMOptions.from_limits(limits, torch.device("cpu"), explicit_dtype=False)
    assert (options.max_num_seqs, options.max_model_len, options.enforce_eager) == (6, 1024, True)
    assert options.dtype == "float32"  # a preset's bfloat16 is for GPUs
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert VLLMOptions.from_limits(limits, torch.device("cpu"), explicit_dtype=True).dtype == "bfloat16"
