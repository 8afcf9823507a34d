"""CHATTERBOX_* settings: defaults, presets, overrides by environment and .env, validation, GiB -> fraction."""

from __future__ import annotations

import json
import os
from dataclasses import FrozenInstanceError, asdict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from chatterbox_vllm.engine.vllm_engine import VLLMOptions
from chatterbox_vllm.settings import PRESETS, EngineLimits, Settings, gpu_memory_utilization

LIMIT_FIELDS = ("gpu_memory_gib", "max_batch_size", "max_model_len", "enforce_eager", "dtype", "s3_tokenizer_on_gpu")
GIB = 2**30


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CHATTERBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the .env lookup sees only what a test writes here


def test_defaults() -> None:
    s = Settings()
    assert (s.model, s.revision, s.device, s.engine, s.preset) == ("english", None, "auto", "auto", "medium")
    assert (s.host, s.port) == ("0.0.0.0", 8000)
    assert all(getattr(s, name) is None for name in LIMIT_FIELDS)  # nothing explicit: the preset decides
    assert s.limits() == EngineLimits(
        gpu_memory_gib=5.0, max_batch_size=12, max_model_len=2048, enforce_eager=False, dtype="bfloat16"
    )


@pytest.mark.parametrize(
    ("preset", "expected"),
    [  # gpu_memory_gib, max_batch_size, max_model_len, enforce_eager, dtype (, s3_tokenizer_on_gpu)
        ("low", EngineLimits(1.75, 2, 1536, True, "bfloat16", s3_tokenizer_on_gpu=False)),
        ("medium", EngineLimits(5.0, 12, 2048, False, "bfloat16")),
        ("high", EngineLimits(10.0, 64, 3072, False, "bfloat16")),
    ],
)
def test_each_preset_resolves_to_its_table(
    monkeypatch: pytest.MonkeyPatch, preset: str, expected: EngineLimits
) -> None:
    monkeypatch.setenv("CHATTERBOX_PRESET", preset)
    assert Settings().limits() == expected
    assert asdict(PRESETS[preset]) == asdict(expected)
    assert Settings(preset=preset).limits() == expected  # the constructor (the CLI's flags) works the same


def test_presets_grow_with_the_card_and_are_frozen() -> None:
    low, medium, high = PRESETS["low"], PRESETS["medium"], PRESETS["high"]
    assert all(isinstance(p, EngineLimits) for p in PRESETS.values())  # a preset is a set of limits
    assert low.gpu_memory_gib < medium.gpu_memory_gib < high.gpu_memory_gib
    assert low.max_batch_size < medium.max_batch_size < high.max_batch_size
    assert low.max_model_len < medium.max_model_len < high.max_model_len
    assert low.enforce_eager and not high.enforce_eager  # CUDA graphs cost memory a small card lacks
    with pytest.raises(FrozenInstanceError):
        low.max_batch_size = 99  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        Settings().limits().max_batch_size = 99  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("CHATTERBOX_GPU_MEMORY_GIB", "2.5", "gpu_memory_gib", 2.5),
        ("CHATTERBOX_MAX_BATCH_SIZE", "3", "max_batch_size", 3),
        ("CHATTERBOX_MAX_MODEL_LEN", "1024", "max_model_len", 1024),
        ("CHATTERBOX_ENFORCE_EAGER", "true", "enforce_eager", True),
        ("CHATTERBOX_DTYPE", "float16", "dtype", "float16"),
        ("CHATTERBOX_S3_TOKENIZER_ON_GPU", "false", "s3_tokenizer_on_gpu", False),
    ],
)
def test_an_explicit_limit_overrides_only_its_preset_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv("CHATTERBOX_PRESET", "high")
    monkeypatch.setenv(variable, value)
    s = Settings()
    assert getattr(s, field) == expected
    assert all(getattr(s, other) is None for other in LIMIT_FIELDS if other != field)
    limits = s.limits()
    assert getattr(limits, field) == expected
    for other in LIMIT_FIELDS:
        if other != field:
            assert getattr(limits, other) == getattr(PRESETS["high"], other)


def test_constructor_limit_overrides_the_preset() -> None:
    limits = Settings(preset="low", max_batch_size=8, enforce_eager=False).limits()
    assert (limits.max_batch_size, limits.enforce_eager) == (8, False)
    assert (limits.gpu_memory_gib, limits.max_model_len) == (1.75, 1536)  # still the low preset's


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("CHATTERBOX_MODEL", "/models/mtl", "model", "/models/mtl"),
        ("CHATTERBOX_MODEL", "multilingual", "model", "multilingual"),
        ("CHATTERBOX_REVISION", "v1.2", "revision", "v1.2"),
        ("CHATTERBOX_DEVICE", "cpu", "device", "cpu"),
        ("CHATTERBOX_DEVICE", "cuda:1", "device", "cuda:1"),
        ("CHATTERBOX_ENGINE", "torch", "engine", "torch"),
        ("CHATTERBOX_PRESET", "low", "preset", "low"),
        ("CHATTERBOX_HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("CHATTERBOX_PORT", "8080", "port", 8080),
        ("CHATTERBOX_S3GEN_DTYPE", "bfloat16", "s3gen_dtype", "bfloat16"),
        ("CHATTERBOX_S3GEN_DTYPE", "float16", "s3gen_dtype", "float16"),
        ("CHATTERBOX_S3GEN_COMPILE", "true", "s3gen_compile", True),
        ("CHATTERBOX_GIL_SWITCH_INTERVAL_MS", "1.5", "gil_switch_interval_ms", 1.5),
        ("CHATTERBOX_CACHE_DIR", "/models/chatterbox", "cache_dir", "/models/chatterbox"),
        ("CHATTERBOX_S3GEN_WARM_UP_TOKENS", "0", "s3gen_warm_up_tokens", 0),
        ("CHATTERBOX_T3_FLASHINFER_SAMPLER", "true", "t3_flashinfer_sampler", True),
        ("CHATTERBOX_T3_COMPILE", "0", "t3_compile", False),  # the values it took before it was a setting
        ("CHATTERBOX_T3_COMPILE", "off", "t3_compile", False),
        ("CHATTERBOX_DICTA_MODEL", "/models/dicta.onnx", "dicta_model", "/models/dicta.onnx"),
    ],
)
def test_each_variable_sets_exactly_its_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    defaults = Settings().model_dump()
    monkeypatch.setenv(variable, value)
    changed = Settings().model_dump()
    assert changed[field] == expected
    assert {k: v for k, v in changed.items() if k != field} == {k: v for k, v in defaults.items() if k != field}


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("chatterbox_max_batch_size", "7")
    assert Settings().max_batch_size == 7


def test_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERBOX_GPU_MEMORY_GIB", "")  # as docker compose writes `${GPU_GIB:-}`
    monkeypatch.setenv("CHATTERBOX_PORT", "")
    s = Settings()
    assert (s.gpu_memory_gib, s.port, s.limits().gpu_memory_gib) == (None, 8000, 5.0)


@pytest.mark.parametrize(
    ("text", "value"), [("false", False), ("true", True), ("0", False), ("1", True), ("TRUE", True), ("off", False)]
)
def test_boolean_parsing(monkeypatch: pytest.MonkeyPatch, text: str, value: bool) -> None:
    monkeypatch.setenv("CHATTERBOX_PRESET", "low" if not value else "high")  # the preset says the opposite
    monkeypatch.setenv("CHATTERBOX_ENFORCE_EAGER", text)
    assert Settings().enforce_eager is value
    assert Settings().limits().enforce_eager is value


@pytest.mark.parametrize(
    ("variable", "value", "field", "why"),
    [
        ("CHATTERBOX_PRESET", "huge", "preset", "low"),  # pydantic lists the allowed values
        ("CHATTERBOX_PORT", "0", "port", "1..65535"),
        ("CHATTERBOX_PORT", "70000", "port", "1..65535"),
        ("CHATTERBOX_PORT", "http", "port", "integer"),
        ("CHATTERBOX_MAX_BATCH_SIZE", "0", "max_batch_size", "at least 1"),
        ("CHATTERBOX_GPU_MEMORY_GIB", "-1", "gpu_memory_gib", "positive"),
        ("CHATTERBOX_GPU_MEMORY_GIB", "0", "gpu_memory_gib", "positive"),
        ("CHATTERBOX_GPU_MEMORY_GIB", "nan", "gpu_memory_gib", "positive"),
        ("CHATTERBOX_MAX_MODEL_LEN", "100", "max_model_len", "at least 256"),
        ("CHATTERBOX_ENFORCE_EAGER", "maybe", "enforce_eager", "boolean"),
        ("CHATTERBOX_ENGINE", "tensorrt", "engine", "vllm"),
        ("CHATTERBOX_DTYPE", "int8", "dtype", "bfloat16"),
        ("CHATTERBOX_DEVICE", "gpu", "device", "cuda:N"),
        ("CHATTERBOX_GIL_SWITCH_INTERVAL_MS", "0", "gil_switch_interval_ms", "greater than 0"),
    ],
)
def test_invalid_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, why: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    errors = excinfo.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert field in str(excinfo.value) and why in str(excinfo.value)


def test_invalid_constructor_values_raise_too() -> None:
    with pytest.raises(ValidationError, match="max_model_len"):
        Settings(max_model_len=255)
    assert Settings(max_model_len=256).limits().max_model_len == 256  # the bound itself is fine
    assert Settings(port=65535).port == 65535 and Settings(port=1).port == 1


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        "# a shared .env\nOTHER_TOOL_SETTING=ignored\nCHATTERBOX_PRESET=low\nCHATTERBOX_PORT=5000\n"
        "CHATTERBOX_MAX_BATCH_SIZE=2\n"
    )
    s = Settings()
    assert (s.preset, s.port, s.limits().max_batch_size) == ("low", 5000, 2)
    monkeypatch.setenv("CHATTERBOX_PORT", "6000")  # the environment beats the file
    assert Settings().port == 6000
    assert Settings(port=7000).port == 7000  # and the constructor (CLI flags) beats both


def test_dotenv_values_are_validated(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CHATTERBOX_MAX_BATCH_SIZE=0\n")
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings()


def test_gpu_memory_utilization() -> None:
    assert gpu_memory_utilization(3, 80 * GIB) == 0.0375
    assert gpu_memory_utilization(3.0, 80 * GIB) == 0.0375
    assert gpu_memory_utilization(5, 12 * GIB) == 0.4166  # rounded down: never above the budget
    assert gpu_memory_utilization(10, 24 * GIB) == 0.4166
    assert gpu_memory_utilization(49, 50 * GIB) == 0.98  # the largest share allowed
    assert gpu_memory_utilization(0.8, 80 * GIB) == 0.01  # the smallest
    # An H100's real total (79.19 GiB), not a round number.
    assert gpu_memory_utilization(10, 85_031_714_816) == 0.1262


@pytest.mark.parametrize(
    ("budget", "total", "message"),
    [
        (10, 8 * GIB, "does not fit"),  # more than the card
        (49.5, 50 * GIB, "does not fit"),  # 0.99: nothing left for CUDA and S3Gen
        (0.1, 80 * GIB, "too small"),
        (0.79, 80 * GIB, "too small"),
    ],
)
def test_gpu_memory_utilization_refuses(budget: float, total: int, message: str) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        gpu_memory_utilization(budget, total)
    text = str(excinfo.value)
    assert f"{budget:g} GiB" in text and f"{total / GIB:.2f} GiB" in text  # names both numbers


@pytest.mark.parametrize(("budget", "total"), [(0, 80 * GIB), (-1, 80 * GIB), (3, 0), (float("inf"), 80 * GIB)])
def test_gpu_memory_utilization_rejects_nonsense(budget: float, total: int) -> None:
    with pytest.raises(ValueError):
        gpu_memory_utilization(budget, total)


def test_vllm_options_from_limits_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    limits = EngineLimits(
        gpu_memory_gib=2.5, max_batch_size=6, max_model_len=1024, enforce_eager=True, dtype="bfloat16"
    )
    options = VLLMOptions.from_limits(limits, torch.device("cpu"), explicit_dtype=False)
    assert (options.max_num_seqs, options.max_model_len, options.enforce_eager) == (6, 1024, True)
    assert options.dtype == "float32"  # a preset's bfloat16 is for GPUs
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert VLLMOptions.from_limits(limits, torch.device("cpu"), explicit_dtype=True).dtype == "bfloat16"


def test_the_api_key_never_shows_in_a_repr_or_the_printed_config() -> None:
    from chatterbox_vllm.cli import effective_config

    settings = Settings(api_key="sk-secret-value-42")
    assert "sk-secret-value-42" not in repr(settings) and "sk-secret-value-42" not in str(settings)
    assert "sk-secret-value-42" not in json.dumps(effective_config(settings), default=str)
    assert settings.api_key == "sk-secret-value-42"


def test_upload_limit_in_bytes_is_what_every_layer_enforces() -> None:
    assert Settings().max_upload_bytes == 10 * 2**20
    assert Settings(max_upload_mib=0.5).max_upload_bytes == 2**19


def test_extra_models_read_as_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATTERBOX_MODEL", raising=False)
    monkeypatch.setenv("CHATTERBOX_EXTRA_MODELS", " turbo, multilingual ,")
    settings = Settings(_env_file=None)
    assert settings.extra_models == ["turbo", "multilingual"]
    assert settings.models == [settings.model, "turbo", "multilingual"]
    monkeypatch.setenv("CHATTERBOX_EXTRA_MODELS", "")
    assert Settings(_env_file=None).extra_models == []
    assert Settings(_env_file=None, extra_models=["nano"]).models == ["english", "nano"]
    with pytest.raises(ValueError, match="vram_budget_gib"):
        Settings(_env_file=None, vram_budget_gib=0)


def test_voices_dir_defaults_to_the_user_data_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from chatterbox_vllm.cli import effective_config

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # what platformdirs reads on Linux
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "data" / "chatterbox-vllm" / "voices"
    assert Settings().voices_dir is None and Settings().resolved_voices_dir() == default
    assert effective_config(Settings())["voices_dir"] == str(default)  # --print-config shows where it would be
    monkeypatch.setenv("CHATTERBOX_VOICES_DIR", "~/my-voices")
    assert Settings().resolved_voices_dir() == tmp_path / "home" / "my-voices"
    assert Settings(voices_dir="/srv/voices").resolved_voices_dir() == Path("/srv/voices")  # the flag wins
    assert effective_config(Settings(voices_dir="./voices"))["voices_dir"] == "./voices"  # as given
    assert not default.exists()  # settings create nothing; the server makes it at start


@pytest.mark.parametrize(("preset", "rows"), [("low", 16), ("medium", 16), ("high", 64)])
def test_s3gen_batch_size_follows_the_preset_unless_set(
    monkeypatch: pytest.MonkeyPatch, preset: str, rows: int
) -> None:
    monkeypatch.setenv("CHATTERBOX_PRESET", preset)
    assert Settings().s3gen_batch_size == rows  # only high grows; low and medium keep 16
    monkeypatch.setenv("CHATTERBOX_S3GEN_BATCH_SIZE", "8")
    assert Settings().s3gen_batch_size == 8
    with pytest.raises(ValidationError, match="s3gen_batch_size"):
        Settings(s3gen_batch_size=65)
