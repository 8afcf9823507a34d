"""start-api-server.sh and `serve` as a new user runs them: help, bad values, offline hub, random-tiny end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chatterbox_vllm.settings import PRESETS
from support.processes import free_port, running_server

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "start-api-server.sh"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # 6 s on an idle host; late in the full suite, beside its session engines, a clean-clone CI run took over 60
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_help() -> None:
    result = run_script("--help")
    assert result.returncode == 0
    for option in ("--preset", "--model", "--port", "random-tiny", "CHATTERBOX_"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--preset", "huge"), "--preset must be"), (("--port", "0"), "port must be"), (("--port", "http"), "port must be"),
     (("--bogus",), "unknown option"), (("--model",), "needs a value")],
)  # fmt: skip
def test_bad_values_are_refused(args: tuple[str, ...], message: str) -> None:
    result = run_script(*args)
    assert result.returncode == 2 and message in result.stderr


def test_serve_without_hub_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "CHATTERBOX_MODEL": "english"}
    result = subprocess.run([sys.executable, "-m", "chatterbox_vllm.cli", "serve"], capture_output=True, text=True,
                            timeout=120, env=env)  # fmt: skip
    assert result.returncode == 2
    assert "random-tiny" in result.stderr and "directory" in result.stderr and "Traceback" not in result.stderr


def test_random_tiny_serves_end_to_end(tmp_path: Path) -> None:
    """The README's run command, offline: the script serves a random checkpoint and answers a speech request."""
    port = free_port()
    env = {**os.environ, "CHATTERBOX_CACHE_DIR": str(tmp_path / "cache"), "CHATTERBOX_MAX_NEW_TOKENS": "40",
           "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "512", "CHATTERBOX_HOST": "127.0.0.1"}  # fmt: skip
    args = ["bash", str(SCRIPT), "--model", "random-tiny", "--port", str(port)]
    with running_server(args, env, port, tmp_path / "server.log") as url:
        response = httpx.post(f"{url}/v1/audio/speech", timeout=120,
                              json={"model": "tts-1", "input": "Hello world.", "voice": "alloy"})  # fmt: skip
        assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
        assert len(response.content) > 1000
        assert (tmp_path / "cache" / "random" / "english-tiny-seed0" / "t3_cfg.safetensors").is_file()


def test_extra_models_reach_the_settings_and_a_second_model_of_one_variant_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATTERBOX_")}
    env["CHATTERBOX_CACHE_DIR"] = str(tmp_path / "cache")
    result = run_script("--preset", "low", "--extra-models", "turbo, random-tiny-nano", "--print-config", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["extra_models"] == ["turbo", "random-tiny-nano"]
    twice = subprocess.run([sys.executable, "-m", "chatterbox_vllm.cli", "serve", "--model", "random-tiny",
                            "--extra-models", "random-tiny-turbo,english"], capture_output=True, text=True,
                           timeout=120, env=env)  # fmt: skip
    assert twice.returncode == 2 and "Traceback" not in twice.stderr
    assert "english is a second english model (after random-tiny); each variant loads once" in twice.stderr


@pytest.mark.parametrize(("mib", "preset"), [("8192", "low"), ("12288", "medium"), ("24576", "high"), ("81559", "high")])
def test_auto_preset_from_gpu_memory(tmp_path: Path, mib: str, preset: str) -> None:
    """--preset auto reads nvidia-smi (there is no GPU here, so a stand-in prints a card's memory as it does)."""
    if not (REPO / ".venv" / "bin" / "chatterbox-vllm").exists():
        pytest.skip("the script would install .venv first; scripts/test.sh makes it")
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho '{mib}'\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATTERBOX_")}
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    result = run_script("--print-config", env=env)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["preset"] == preset and f"GPU memory {mib} MiB" in result.stderr
    assert config["limits"]["max_batch_size"] == PRESETS[preset].max_batch_size
