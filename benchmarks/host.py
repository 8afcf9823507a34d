"""What the benchmarks' reports say about the machine and the run, and what their servers need from the host:
the GPU's name and used memory by nvidia-smi (so that a process measuring a server never initialises CUDA beside
it), a free loopback port, the command line as it was typed. Light: no torch, no chatterbox_vllm."""

from __future__ import annotations

import platform
import shlex
import socket
import subprocess
import sys
import threading
import time


def _nvidia_smi(query: str) -> str | None:
    """The first GPU's `--query-gpu` field, None without nvidia-smi or a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out and out[0].strip() else None


def gpu_name() -> str | None:
    """The first GPU's name ('NVIDIA H200'), None without one."""
    return _nvidia_smi("name")


def gpu_used_mib() -> float | None:
    """The first GPU's used memory (MiB, every process on it), None without one."""
    used = _nvidia_smi("memory.used")
    try:
        return float(used) if used is not None else None
    except ValueError:
        return None


def device_name() -> str:
    """The GPU's name, else 'CPU (<processor>)'."""
    return gpu_name() or f"CPU ({platform.processor() or platform.machine() or 'cpu'})"


class PeakPoller:
    """The largest `used()` seen, polled every `interval_s` in a thread between `with` entry and exit (memory a
    measured run holds at its peak; a subclass says what is measured)."""

    interval_s = 0.1

    def __init__(self) -> None:
        self.baseline = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def used(self) -> float:
        raise NotImplementedError

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_line() -> str:
    """The command that started this benchmark, as typed in the repository root: `python -m benchmarks.<name> ...`
    (sys.argv[0] alone would be the module's file path)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    target = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return "python " + shlex.join([*target, *sys.argv[1:]])
