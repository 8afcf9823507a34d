"""NVIDIA MPS for the server's own processes: opt-in (`CHATTERBOX_CUDA_MPS`), off by default.

On a GPU the server runs T3 in vLLM's engine process and S3Gen in a worker process of its own; without MPS the
driver time-slices the two processes' CUDA contexts, so S3Gen's kernels wait while T3's run and the other way round.
With NVIDIA's Multi-Process Service the processes' kernels share the SMs at once (an H200, 2026-12-03: 64 concurrent
sentences 54.7x against 40.9x real time in the same call while first partials ran at that load; no gain in the one
sample since they stop above 16 requests, BENCHMARKS.md note 11). It stays opt-in because it changes how the whole
GPU is shared: every CUDA process that uses the daemon's pipe directory runs through one MPS server.

The daemon started here is private: its pipe and log directories live under the cache directory, and only this
server's processes (they inherit `CUDA_MPS_PIPE_DIRECTORY`) connect to it; other processes on the machine are not
affected. It must start before the first CUDA context of the server (and so before vLLM's engine process and the
S3Gen worker are spawned): `serve` starts it before anything loads. Where the user already runs a daemon and names
its pipe directory in `CUDA_MPS_PIPE_DIRECTORY`, that daemon is used and left running. Where MPS cannot start (no
`nvidia-cuda-mps-control`, no GPU, a GPU in exclusive mode for another process), the server says why and runs
without it. One subprocess at start and one at stop, never per request.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
COMMAND_TIMEOUT_S = 10.0


@dataclass
class MPSState:
    """What became of the request for MPS. `mode`: off (not asked), started (a daemon of this server's own),
    external (a daemon the user runs, named by CUDA_MPS_PIPE_DIRECTORY), unavailable (`reason` says why)."""

    mode: str
    pipe_dir: Path | None = None
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.mode in ("started", "external")

    def describe(self) -> str:
        if self.mode == "unavailable":
            return f"unavailable ({self.reason})"
        return self.mode if self.pipe_dir is None else f"{self.mode} (pipes in {self.pipe_dir})"


def _control(
    pipe_dir: Path, log_dir: Path | None, *args: str, command: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the control binary against the daemon of `pipe_dir` (`command` goes to its stdin: the daemon's console)."""
    env = dict(os.environ, **{PIPE_ENV: str(pipe_dir)})
    if log_dir is not None:
        env[LOG_ENV] = str(log_dir)
    return subprocess.run(
        [CONTROL, *args], input=command, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )


def _answers(pipe_dir: Path) -> bool:
    """A daemon listens on this pipe directory (a stale socket of a killed daemon does not answer)."""
    if not (pipe_dir / "control").exists():
        return False
    try:
        return _control(pipe_dir, None, command="get_server_list\n").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_mps(wanted: bool, cache_dir: Path, device: str = "auto") -> MPSState:
    """Start (or join) the MPS control daemon for this process and its children, before any CUDA context exists.

    Sets `CUDA_MPS_PIPE_DIRECTORY` (and the log directory) in this process's environment when MPS is used, so
    vLLM's engine process and the S3Gen worker inherit it. Never raises for a machine without MPS: the server
    runs without it and the returned state says why."""
    if not wanted:
        return MPSState("off")
    if device == "cpu":
        return MPSState("unavailable", reason="CHATTERBOX_DEVICE is cpu")
    external = os.environ.get(PIPE_ENV)
    if external:
        if _answers(Path(external)):
            return MPSState("external", Path(external))
        return MPSState("unavailable", reason=f"{PIPE_ENV}={external} is set but no MPS daemon answers there")
    binary = shutil.which(CONTROL)
    if binary is None:
        return MPSState("unavailable", reason=f"{CONTROL} is not on PATH (it comes with the NVIDIA driver)")
    pipe_dir, log_dir = cache_dir / "mps" / "pipe", cache_dir / "mps" / "log"
    pipe_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    if not _answers(pipe_dir):  # else a daemon of an earlier start that was killed: joined, stopped with this one
        try:
            started = _control(pipe_dir, log_dir, "-d")
        except (OSError, subprocess.TimeoutExpired) as exc:
            return MPSState("unavailable", reason=f"{CONTROL} -d failed: {exc}")
        if started.returncode != 0 or not _answers(pipe_dir):
            detail = (started.stderr or started.stdout).strip()[:300]
            return MPSState("unavailable", reason=f"{CONTROL} -d exited {started.returncode}: {detail} "
                            f"(logs in {log_dir})")  # fmt: skip
    os.environ[PIPE_ENV] = str(pipe_dir)
    os.environ[LOG_ENV] = str(log_dir)
    return MPSState("started", pipe_dir)


def stop_mps(state: MPSState) -> None:
    """Stop a daemon this server started (one the user runs is left alone). Clients still attached get cut off,
    so call it once the server's processes are gone."""
    if state.mode != "started" or state.pipe_dir is None:
        return
    try:
        _control(state.pipe_dir, None, command="quit\n")
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("the MPS control daemon did not stop (%s); its pipes are in %s", exc, state.pipe_dir)
