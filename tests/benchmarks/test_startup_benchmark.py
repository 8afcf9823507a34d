"""The start-up benchmark runs end to end on a CPU with the tiny model (the GPU figures come from the same code):
two real `chatterbox-vllm serve` starts on one cache directory, each timed to ready with its phases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from chatterbox_vllm.server.startup import READY_PREFIX

REPO = Path(__file__).resolve().parents[2]
STARTUP = [sys.executable, "-m", "benchmarks.startup"]  # with cwd=REPO
SERVER_PHASES = {"load_s3gen_voice_encoder", "t3_engine", "voice_warm_up"}  # on CPU: no S3Gen graphs to capture


def test_cold_and_warm_start_with_phases(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # A cache variable set in the caller's environment must not divert the server's caches from the cache directory.
    env = {**os.environ, "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "1024",
           "VLLM_CACHE_ROOT": str(tmp_path / "elsewhere")}  # fmt: skip
    out = tmp_path / "startup.json"
    run = subprocess.run([*STARTUP, "--model", "random-tiny", "--preset", "medium", "--device",
                          "cpu", "--cache-dir", str(cache), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=1500, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "CPU" and report["command"].startswith("python ")
    assert report["ready_s_cold"] == report["cold"]["ready_s"] and report["ready_s_warm"] == report["warm"]["ready_s"]
    for kind in ("cold", "warm"):
        start = report[kind]
        assert start["exit_code"] == 0  # stopped cleanly by SIGTERM
        phases = start["phases_s"]
        assert set(phases) == SERVER_PHASES, phases
        assert all(seconds >= 0 for seconds in phases.values())
        # /health turned 200 after the app's own count (which starts after the imports), and the warm-ups after it
        assert 0 < start["server_ready_after_s"] <= start["health_ok_s"] <= start["ready_s"]
        # the phases before ready fit in the app's count (they overlap: the engine starts while the parts load)
        assert max(phases["load_s3gen_voice_encoder"], phases["t3_engine"]) <= start["server_ready_after_s"]
        # vLLM's engine process said how long its init took (the server ran at debug level)
        assert start["vllm_s"]["vllm_init_engine"] > 0
        log = Path(start["log"]).read_text()
        (ready,) = [line for line in log.splitlines() if READY_PREFIX in line]
        assert "; started in " in ready
        # the compile caches are the cache directory's, whatever the caller's environment said
        assert f"VLLM_CACHE_ROOT={cache / 'compile' / 'vllm'}" in log
    assert (cache / "compile" / "vllm").is_dir() and not (tmp_path / "elsewhere").exists()
    assert set(report["compile_cache_mib"]) >= {"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"}
