"""Seconds from `chatterbox-vllm serve` to ready: cold (empty compile caches) and warm (the caches the cold start
left in the same cache directory), with where each start's time went.

Each start is the server as users start it (`python -m chatterbox_vllm.cli serve`, its default process layout,
settings from CHATTERBOX_* variables), timed from the process's launch to two moments: /health's first 200
(`health_ok_s`) and the end of the warm-ups that run on S3Gen's thread, S3Gen's compile and CUDA graphs, then voice
analysis (`ready_s`: requests no longer queue behind start-up work, which is what `ready_s_cold`/`ready_s_warm`
report). The server marks a model ready only after those warm-ups, so the two coincide; both are kept so a server
that answered 200 early would show it. Then it is stopped (SIGTERM) and the next one starts. The split comes
from two places:
* the server's own phases (/health's `startup_phases_s`): S3Gen, voice encoder and tokenizer loading, T3's engine
  start (all of vLLM's work), S3Gen's compile (its first graph) and its other graphs, voice analysis warm-up;
* vLLM's engine process's log lines (weights load, torch.compile, CUDA-graph capture, the whole engine init), which
  it writes at the server's debug level only: so the server runs at `--log-level debug` here (`--log-level info`
  for a start exactly as users run it, without the vLLM split).
Cold clears `<cache dir>/compile` first (every compile cache the server keeps: vLLM, Inductor, Triton, FlashInfer,
CUDA) and runs with no library cache variable set, so that nothing compiled earlier elsewhere is found. Model
weights (the Hugging Face cache, the random checkpoint) stay: they are downloads, not compiles.

    python -m benchmarks.startup --model /root/ckpt/english --preset high --cache-dir /root/startup-cache \\
        --out startup.json                                                # the GPU figures (BENCHMARKS.md)
    python -m benchmarks.startup --model random-tiny --device cpu --out startup.json      # CI, on a CPU

`measure_ready(model, preset, cache_dir)` is the same, for other benchmarks (the headline report).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from benchmarks.host import command_line, free_port, gpu_name

from chatterbox_vllm.compile_cache import CACHE_DIRECTORIES, CACHE_DIR_ENV, COMPILE_SUBDIR

POLL_S = 0.25
# vLLM's engine-process lines (0.26 .. 0.33) and the phase each one gives, in seconds.
VLLM_LINES: dict[str, re.Pattern[str]] = {
    "vllm_model_load": re.compile(r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) seconds"),
    "vllm_torch_compile": re.compile(r"torch\.compile (?:takes|took) ([\d.]+) s in total"),
    "vllm_graph_capture": re.compile(r"Graph capturing finished in ([\d.]+) secs"),
    "vllm_init_engine": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
}


def vllm_phases(log_text: str) -> dict[str, float]:
    """vLLM's own start-up figures from its log lines (summed where a line repeats, e.g. several models)."""
    phases: dict[str, float] = {}
    for name, pattern in VLLM_LINES.items():
        values = [float(value) for value in pattern.findall(log_text)]
        if values:
            phases[name] = round(sum(values), 2)
    return phases


def server_env(model: str, preset: str, cache_dir: Path, port: int, *, device: str | None, log_level: str,
               voices_dir: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """The environment of one start: this process's, without any library's own cache variable (every cache then
    follows the cache directory) nor VLLM_ENABLE_V1_MULTIPROCESSING (which other benchmarks set to run vLLM in
    their process: the server's default layout has its engine in a process of its own), and the settings a user
    would set."""
    dropped = {*CACHE_DIRECTORIES, "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env.update({
        CACHE_DIR_ENV: str(cache_dir), "CHATTERBOX_MODEL": model, "CHATTERBOX_PRESET": preset,
        "CHATTERBOX_HOST": "127.0.0.1", "CHATTERBOX_PORT": str(port), "CHATTERBOX_LOG_LEVEL": log_level,
        "CHATTERBOX_VOICES_DIR": str(voices_dir),
    })  # fmt: skip
    if device is not None:
        env["CHATTERBOX_DEVICE"] = device
    env.update(extra_env or {})
    return env


def stop(server: subprocess.Popen) -> float:
    """SIGTERM, as systemd and Docker stop it; SIGKILL after a minute. Returns the seconds it took to exit."""
    started = time.monotonic()
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return time.monotonic() - started


def start_once(model: str, preset: str, cache_dir: Path, log_path: Path, *, device: str | None = None,
               log_level: str = "debug", timeout_s: float = 900, extra_env: dict[str, str] | None = None,
               ) -> dict[str, Any]:  # fmt: skip
    """Start the server, time it to ready, read its phases, stop it. Raises RuntimeError (with the log's tail) when
    it exits or is not ready within `timeout_s`."""
    port = free_port()
    env = server_env(model, preset, cache_dir, port, device=device, log_level=log_level,
                     voices_dir=log_path.parent / "voices", extra_env=extra_env)  # fmt: skip
    url = f"http://127.0.0.1:{port}/health"
    with log_path.open("w") as log:
        started = time.monotonic()
        server = subprocess.Popen([sys.executable, "-m", "chatterbox_vllm.cli", "serve"], stdout=log,
                                  stderr=subprocess.STDOUT, env=env)  # fmt: skip
        try:
            deadline = started + timeout_s
            wait_health(server, url, deadline, log_path, lambda body: True)
            health_ok_s = time.monotonic() - started
            health = wait_health(server, url, deadline, log_path, warmed_up)
            ready_s = time.monotonic() - started
        finally:
            stop_s = stop(server)
    entry = health["models"][0]
    return {
        "ready_s": round(ready_s, 2),
        "health_ok_s": round(health_ok_s, 2),
        "server_ready_after_s": entry.get("ready_after_s"),  # from the app's start (imports before it not counted)
        "phases_s": entry.get("startup_phases_s", {}),
        "vllm_s": vllm_phases(log_path.read_text(errors="replace")),
        "stop_s": round(stop_s, 2),
        "exit_code": server.returncode,
        "log": str(log_path),
    }


def warmed_up(body: dict[str, Any]) -> bool:
    """Every model's warm-ups on S3Gen's thread are done: voice analysis's, which runs after S3Gen's."""
    return all("voice_warm_up" in model.get("startup_phases_s", {}) for model in body["models"])


def wait_health(server: subprocess.Popen, url: str, deadline: float, log_path: Path,
                done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:  # fmt: skip
    """Poll /health until it answers 200 with a body `done` accepts; that body."""
    with httpx.Client(timeout=5) as client:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited ({server.returncode}) before it was ready:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")  # fmt: skip
            with contextlib.suppress(httpx.TransportError):
                response = client.get(url)
                if response.status_code == 200 and done(response.json()):
                    return response.json()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in time:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(POLL_S)


def clear_compile_caches(cache_dir: Path) -> None:
    """Remove every compile cache the server keeps in `cache_dir` (the next start is cold)."""
    shutil.rmtree(cache_dir / COMPILE_SUBDIR, ignore_errors=True)


def cache_sizes_mib(cache_dir: Path) -> dict[str, float]:
    """Each compile cache's size on disk (what a warm start reuses)."""
    sizes = {}
    for name, sub in CACHE_DIRECTORIES.items():
        directory = cache_dir / COMPILE_SUBDIR / sub
        files = [path for path in directory.rglob("*") if path.is_file()] if directory.is_dir() else []
        sizes[name] = round(sum(path.stat().st_size for path in files) / 2**20, 2)
    return sizes


def measure_ready(model: str, preset: str, cache_dir: str | Path, *, device: str | None = None,
                  log_level: str = "debug", timeout_s: float = 900, extra_env: dict[str, str] | None = None,
                  log_dir: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """A cold start (compile caches cleared) and a warm one (with what the cold one left), each timed from launch to
    ready (warm-ups done). Returns `ready_s_cold`, `ready_s_warm` (seconds), `cold` and `warm` (each start's
    `health_ok_s`, phases, vLLM's figures, stop time, log) and `compile_cache_mib` (the caches' sizes after the cold
    start)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="startup-"))
    logs.mkdir(parents=True, exist_ok=True)
    clear_compile_caches(cache_dir)
    options = dict(device=device, log_level=log_level, timeout_s=timeout_s, extra_env=extra_env)
    cold = start_once(model, preset, cache_dir, logs / "cold.log", **options)
    sizes = cache_sizes_mib(cache_dir)
    warm = start_once(model, preset, cache_dir, logs / "warm.log", **options)
    return {"ready_s_cold": cold["ready_s"], "ready_s_warm": warm["ready_s"], "cold": cold, "warm": warm,
            "compile_cache_mib": sizes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="english")
    parser.add_argument("--preset", default="high")
    parser.add_argument("--device", default=None, help="CHATTERBOX_DEVICE (default: the server's, auto)")
    parser.add_argument("--cache-dir", default=None, help="the cache directory (default: a new temporary one)")
    parser.add_argument("--log-level", default="debug", choices=["debug", "info"],
                        help="the server's; debug shows vLLM's own phases")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900, help="seconds one start may take")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="startup-cache-"))
    out = Path(args.out)
    result = measure_ready(args.model, args.preset, cache_dir, device=args.device, log_level=args.log_level,
                           timeout_s=args.timeout, log_dir=out.parent / f"{out.stem}-logs")  # fmt: skip
    report = {
        "device": gpu_name() or "CPU", "date": dt.date.today().isoformat(), "command": command_line(),
        "model": args.model, "preset": args.preset, "cache_dir": str(cache_dir), **result,
    }  # fmt: skip
    out.write_text(json.dumps(report, indent=2))
    print(f"ready cold {result['ready_s_cold']:.1f} s, warm {result['ready_s_warm']:.1f} s (/health 200 after "
          f"{result['cold']['health_ok_s']:.1f} s and {result['warm']['health_ok_s']:.1f} s)")
    for kind in ("cold", "warm"):
        print(f"{kind}: server {result[kind]['phases_s']} vllm {result[kind]['vllm_s']}")


if __name__ == "__main__":
    main()
