"""Deployment files: the offline checks pass (hadolint, Compose spec, systemd verify, Helm), and the files say
what users rely on (non-root, health checks on /health, port 8000, GPU reservation, volumes, Open WebUI wiring)."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from chatterbox_vllm.compile_cache import CACHE_DIRECTORIES

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
    # the cache directory, and with it every compile cache, in the volume: a restart does not compile again. No
    # library's cache variable is set on its own (it would win over the cache directory's, elsewhere).
    assert any("CHATTERBOX_CACHE_DIR=/models/" in line for line in lines)
    assert not any(name in line for line in lines for name in CACHE_DIRECTORIES)
    # Two variants over one Ubuntu release, picked by a build argument; the GPU one by default.
    assert "ARG VARIANT=gpu" in lines
    assert any(re.fullmatch(r"FROM nvidia/cuda:\S+-ubuntu24\.04 AS base-gpu", line) for line in lines)
    assert "FROM ubuntu:24.04 AS base-cpu" in lines
    assert "FROM base-${VARIANT}" in lines


def dockerfile_install(variant: str) -> list[list[str]]:
    """The commands the Dockerfile's install step runs for `variant`, as scripts/install.sh --dry-run prints them."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (step,) = [line for line in dockerfile.splitlines() if line.startswith("RUN ") and "scripts/install.sh" in line]
    assert "COPY scripts/install.sh ./scripts/" in dockerfile.splitlines()  # the script is in the image
    words = shlex.split(step.removeprefix("RUN ").replace("${VARIANT}", variant))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATTERBOX_", "PYTHON"))}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0] == "scripts/install.sh", words
    done = subprocess.run(["bash", *words, "--dry-run"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if not line.startswith("#")]


def test_dockerfile_installs_each_variant_through_the_install_script() -> None:
    cpu_index = "https://download.pytorch.org/whl/cpu"
    gpu = dockerfile_install("gpu")
    assert gpu[0] == ["python3", "-m", "venv", "/opt/venv"]
    assert gpu[-1][-2:] == ["install", ".[gpu]"]  # a regular install, not an editable one
    assert not any(cpu_index in command for command in gpu)
    cpu = dockerfile_install("cpu")
    (torch_step,) = [c for c in cpu if "--no-deps" in c]
    assert torch_step[-3:] == ["--extra-index-url", cpu_index, "torch==2.13.0+cpu"]
    assert any(c[-3:] == ["install", ".[cpu]", "torch==2.13.0+cpu"] for c in cpu)
    assert all(c[0].startswith("/opt/venv/bin/") for c in cpu[1:])
    # The image's PATH points at that environment, and no later step installs anything else.
    assert "ENV PATH=/opt/venv/bin:$PATH" in (ROOT / "Dockerfile").read_text().splitlines()


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".cache", "tests"} <= ignored
    assert not {"scripts", "scripts/", "scripts/install.sh", "*.sh"} & ignored  # the image installs through it


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


class _ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: `!override` (and `!reset`) tags on a node, which a merge of files reads; here the node itself."""


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, lambda loader, node: (
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)
    ))  # fmt: skip


def test_multi_gpu_compose_file() -> None:
    """deploy/compose/multi-gpu.yml: every GPU replaces the main file's one, and each variable it sets is a setting."""
    from chatterbox_vllm.settings import Settings

    text = (ROOT / "deploy" / "compose" / "multi-gpu.yml").read_text()
    assert "devices: !override" in text  # replaces the main file's list (a plain list would be appended to it)
    api = yaml.load(text, Loader=_ComposeLoader)["services"]["chatterbox"]
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all" and "gpu" in device["capabilities"]
    names = [name.removeprefix("CHATTERBOX_").lower() for name in api["environment"] if name.startswith("CHATTERBOX_")]
    assert "s3gen_devices" in names and set(names) <= set(Settings.model_fields)
    assert api["environment"]["CHATTERBOX_S3GEN_DEVICES"] == "${CHATTERBOX_S3GEN_DEVICES:-auto}"
    # the main file passes the placement variables through, and both point at the README's section
    main = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["chatterbox"]["environment"]
    assert {"CHATTERBOX_S3GEN_DEVICES", "CHATTERBOX_T3_DATA_PARALLEL_SIZE"} <= set(main)
    assert {name.removeprefix("CHATTERBOX_").lower() for name in main if name.startswith("CHATTERBOX_")} <= set(
        Settings.model_fields
    )
    assert '"Several GPUs in one host"' in text
    assert "\n## Several GPUs in one host\n" in (ROOT / "README.md").read_text()
