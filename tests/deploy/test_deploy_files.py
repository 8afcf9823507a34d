"""Deployment files: the offline checks pass (hadolint, Compose spec, systemd verify, Helm), and the files say
what users rely on (non-root, health checks on /health, port 8000, GPU reservation, volumes, Open WebUI wiring)."""

from __future__ import annotations

import re

import configparser
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_offline_deploy_checks_pass() -> None:
    result = subprocess.run(["bash", str(ROOT / "tools/deploy/check.sh")], capture_output=True, text=True,
                            timeout=900, cwd=ROOT)  # fmt: skip
    if result.returncode == 4:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "deploy check: all passed" in result.stdout


def test_dockerfile() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    user = [line for line in lines if line.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("root", "0"))
    assert any(line.startswith("EXPOSE 8000") for line in lines)
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert any("/health" in line for line in lines)
    assert any(line.startswith("VOLUME") and "/models" in line and "/voices" in line for line in lines)
    assert any("HF_HOME=/models/huggingface" in line for line in lines)
    # compile caches in the volume: a restart does not compile again
    assert any("VLLM_CACHE_ROOT=/models/" in line for line in lines)
    assert any("TORCHINDUCTOR_CACHE_DIR=/models/" in line for line in lines)
    assert any(line.startswith("FROM nvidia/cuda:") for line in lines)
    assert any('".[gpu]"' in line for line in lines)


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".cache", "tests"} <= ignored


def test_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["chatterbox"]
    assert "8000:8000" in api["ports"]
    device = api["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any("/health" in part for part in api["healthcheck"]["test"])
    assert {"hf-cache:/models", "voices:/voices"} <= set(api["volumes"])
    webui = compose["services"]["open-webui"]
    assert webui["profiles"] == ["webui"]
    env = webui["environment"]
    assert env["AUDIO_TTS_ENGINE"] == "openai"
    assert env["AUDIO_TTS_OPENAI_API_BASE_URL"] == "http://chatterbox:8000/v1"
    assert env["AUDIO_TTS_MODEL"] == "tts-1" and env["AUDIO_TTS_VOICE"] == "alloy"
    assert webui["depends_on"]["chatterbox"]["condition"] == "service_healthy"
    assert {"hf-cache", "voices"} <= set(compose["volumes"])


def test_every_deployment_waits_longer_than_the_drain() -> None:
    """A stop must not kill the server while it drains speech in progress (CHATTERBOX_DRAIN_TIMEOUT_S)."""
    from chatterbox_vllm.settings import Settings

    drain = Settings.model_fields["drain_timeout_s"].default
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert int(compose["services"]["chatterbox"]["stop_grace_period"].removesuffix("s")) > drain
    unit = (ROOT / "chatterbox-tts.service.example").read_text()
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1)) > drain
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "chatterbox-vllm" / "values.yaml").read_text())
    assert values["terminationGracePeriodSeconds"] > drain


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read_string((ROOT / "chatterbox-tts.service.example").read_text())
    service = unit["Service"]
    assert service["User"] == "chatterbox" and service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/chatterbox-tts.env"
    assert service["ExecStart"].endswith("chatterbox-vllm serve")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                       "ProtectControlGroups": "yes", "LockPersonality": "yes"}.items():  # fmt: skip
        assert service[key] == value, key
    assert "MemoryMax" in service and "LimitNOFILE" in service and "ReadWritePaths" in service
    assert "PrivateDevices" not in service  # it would hide /dev/nvidia*
    assert unit["Install"]["WantedBy"] == "multi-user.target"
