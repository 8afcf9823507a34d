"""The opt-in MPS daemon (`cuda_mps.py`): when it starts, where its pipes go, what is left alone.

The real `nvidia-cuda-mps-control` needs an NVIDIA driver, which these machines lack, so the control binary here is
a small script that keeps the daemon's contract as the device run showed it (`-d` forks a daemon that creates
`control` in CUDA_MPS_PIPE_DIRECTORY; `get_server_list` on stdin answers 0 while it runs; `quit` stops it) and
writes every call to a journal. The GPU path itself runs in the device benchmark (`LAYOUTS_MPS=1 bash
benchmarks/device/layouts.sh`, which starts the server with CHATTERBOX_CUDA_MPS=true).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatterbox_vllm import cuda_mps
from chatterbox_vllm.cuda_mps import LOG_ENV, PIPE_ENV, MPSState, start_mps, stop_mps

FAKE_CONTROL = """#!/usr/bin/env python3
import json, os, sys
from pathlib import Path
pipe = Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
journal = Path(os.environ["MPS_JOURNAL"])
command = sys.stdin.read().strip() if not sys.argv[1:] else ""
with journal.open("a") as out:
    out.write(json.dumps({"args": sys.argv[1:], "stdin": command, "pipe": str(pipe),
                          "log": os.environ.get("CUDA_MPS_LOG_DIRECTORY")}) + "\\n")
control = pipe / "control"
if sys.argv[1:] == ["-d"]:
    if os.environ.get("MPS_REFUSE"):
        print("An instance of this daemon is already running", file=sys.stderr)
        sys.exit(1)
    control.write_text("running")
    sys.exit(0)
if command == "get_server_list":
    sys.exit(0 if control.exists() and control.read_text() == "running" else 1)
if command == "quit":
    control.unlink(missing_ok=True)
    sys.exit(0)
sys.exit(2)
"""


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PATH holding the stand-in control binary; yields its journal. The environment is restored after."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / cuda_mps.CONTROL
    script.write_text(FAKE_CONTROL.replace("/usr/bin/env python3", sys.executable, 1))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPS_JOURNAL", str(journal))
    monkeypatch.delenv(PIPE_ENV, raising=False)
    monkeypatch.delenv(LOG_ENV, raising=False)
    yield journal


def _calls(journal: Path) -> list[dict]:
    return [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []


def test_off_by_default_touches_nothing(control: Path, tmp_path: Path) -> None:
    from chatterbox_vllm.settings import Settings

    assert Settings().cuda_mps is False
    state = start_mps(False, tmp_path / "cache")
    assert state == MPSState("off") and not state.active
    assert PIPE_ENV not in os.environ and not _calls(control)


def test_starts_a_private_daemon_that_children_inherit_and_stops_it(control: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    state = start_mps(True, cache, "auto")
    pipe = cache / "mps" / "pipe"
    assert state.mode == "started" and state.pipe_dir == pipe and state.active
    assert os.environ[PIPE_ENV] == str(pipe) and os.environ[LOG_ENV] == str(cache / "mps" / "log")
    started = [c for c in _calls(control) if c["args"] == ["-d"]]
    assert started == [{"args": ["-d"], "stdin": "", "pipe": str(pipe), "log": str(cache / "mps" / "log")}]
    # a child process (vLLM's engine core, the S3Gen worker) sees the same pipe directory
    child = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{PIPE_ENV}'])"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert child.stdout.strip() == str(pipe)
    stop_mps(state)
    assert _calls(control)[-1]["stdin"] == "quit" and not (pipe / "control").exists()


def test_a_live_daemon_of_an_earlier_start_is_joined_not_started_twice(control: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = start_mps(True, cache)
    os.environ.pop(PIPE_ENV)  # a new server process: it does not inherit the first one's variable
    second = start_mps(True, cache)
    assert first.mode == second.mode == "started" and second.pipe_dir == first.pipe_dir
    assert sum(c["args"] == ["-d"] for c in _calls(control)) == 1


def test_a_stale_socket_of_a_killed_daemon_is_replaced(control: Path, tmp_path: Path) -> None:
    pipe = tmp_path / "cache" / "mps" / "pipe"
    pipe.mkdir(parents=True)
    (pipe / "control").write_text("stale")  # left by a daemon that no longer answers
    state = start_mps(True, tmp_path / "cache")
    assert state.mode == "started"
    assert [c["args"] for c in _calls(control)].count(["-d"]) == 1


def test_a_daemon_the_user_runs_is_used_and_left_running(
    control: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "control").write_text("running")
    monkeypatch.setenv(PIPE_ENV, str(theirs))
    state = start_mps(True, tmp_path / "cache")
    assert state.mode == "external" and state.pipe_dir == theirs
    stop_mps(state)
    assert (theirs / "control").exists()
    assert not any(c["args"] == ["-d"] or c["stdin"] == "quit" for c in _calls(control))


def test_a_named_pipe_directory_without_a_daemon_is_reported(
    control: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PIPE_ENV, str(tmp_path / "nobody"))
    state = start_mps(True, tmp_path / "cache")
    assert state.mode == "unavailable" and "no MPS daemon answers" in state.reason and not state.active


def test_a_daemon_that_does_not_start_is_reported_and_the_env_left_alone(
    control: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPS_REFUSE", "1")
    state = start_mps(True, tmp_path / "cache")
    assert state.mode == "unavailable" and "already running" in state.reason
    assert PIPE_ENV not in os.environ
    stop_mps(state)  # nothing of its own to stop
    assert not any(c["stdin"] == "quit" for c in _calls(control))


def test_without_the_binary_or_on_a_cpu_it_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PIPE_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control here
    missing = start_mps(True, tmp_path / "cache")
    assert missing.mode == "unavailable" and "not on PATH" in missing.reason
    assert start_mps(True, tmp_path / "cache", "cpu").reason == "CHATTERBOX_DEVICE is cpu"
    assert PIPE_ENV not in os.environ


def test_serve_reports_mps_it_cannot_use_and_still_checks_its_settings(tmp_path: Path) -> None:
    """`serve` asks for MPS before anything else: on this machine (no driver) it warns and goes on to its checks,
    here the model check that exits 2 before the port opens."""
    env = dict(os.environ, CHATTERBOX_CUDA_MPS="true", CHATTERBOX_CACHE_DIR=str(tmp_path / "cache"), PATH=os.defpath)
    env.pop(PIPE_ENV, None)
    done = subprocess.run([sys.executable, "-m", "chatterbox_vllm.cli", "serve", "--model", str(tmp_path / "none")],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "NVIDIA MPS asked for but not used" in done.stderr + done.stdout
