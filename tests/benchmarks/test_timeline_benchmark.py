"""The timeline benchmark runs end to end on a CPU with the tiny model (the GPU figures come from the same code)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMELINE = [sys.executable, "-m", "benchmarks.timeline"]  # with cwd=REPO


def test_timeline_levels_bins_and_plot(tmp_path: Path) -> None:
    env = {**os.environ, "CHATTERBOX_CACHE_DIR": str(tmp_path / "cache"), "CHATTERBOX_GPU_MEMORY_GIB": "1",
           "CHATTERBOX_MAX_MODEL_LEN": "1024"}  # fmt: skip
    out, png = tmp_path / "timeline.json", tmp_path / "timeline.png"
    run = subprocess.run([*TIMELINE, "--model", "random-tiny", "--levels", "1", "2",
                          "--seconds", "1", "--max-new-tokens", "20", "--traces", str(tmp_path / "traces"),
                          "--out", str(out), "--plot", str(png)],
                         capture_output=True, text=True, cwd=REPO, timeout=900, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"].startswith("CPU") and report["command"].startswith("python ")
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["failed"] == 0 and level["requests"] >= level["concurrency"]
        window, bins = level["window"], level["bins"]
        # the bins cover the measured bursts, 100 ms each
        bursts = level["bursts"]
        assert window["start_ns"] == bursts[0]["start_ns"] and window["end_ns"] == bursts[-1]["end_ns"]
        assert window["bins"] == math.ceil(window["ms"] / 100) == len(bins["start_ms"]) == len(bins["s3gen_ms"])
        # S3Gen's work (its thread's CPU ops here) and T3's (vLLM's engine profiler) were both seen and placed
        assert level["totals_ms"]["s3gen_ms"] > 0 and level["methods"]["t3"].startswith("vLLM engine-core")
        assert level["totals_ms"]["t3_ms"] > 0 and level["totals_ms"]["switches"] >= 1
        for trace in ("server_torch", "engine_torch"):
            assert level["alignment"][trace]["marks_found"] == 2, level["alignment"]
        for key in ("t3_ms", "s3gen_ms", "busy_ms", "idle_ms"):
            assert len(bins[key]) == window["bins"] and all(0 <= v <= 100.001 for v in bins[key]), key
        assert all(abs(b + i - 100) < 1e-6 for b, i in zip(bins["busy_ms"], bins["idle_ms"]))
        # the GIL, from py-spy (installed with the bench extra): S3Gen's thread held it while it worked
        gil = bins["gil_ms"]
        assert gil is not None, level["methods"]["gil"]
        assert level["alignment"]["gil"]["server"]["marks_found"] == 2
        assert sum(gil["s3gen"]) > 0 and all(len(v) == window["bins"] for v in gil.values())
        assert all(low <= up + 1e-6 for cls in ("s3gen", "http_loop") for low, up in zip(gil[cls], gil[f"{cls}_upper"]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
