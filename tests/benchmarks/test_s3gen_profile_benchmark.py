"""benchmarks/s3gen_profile.py runs on a CPU with the tiny model (its GPU figures come from the same code); nothing
here is timed: the batch part and the `--kernels` table are checked for shape and consistency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_batches_and_the_kernel_table(english_tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "s3gen.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.s3gen_profile", "--model",
                          str(english_tiny_checkpoint), "--skip-single", "--device", "cpu", "--tokens", "12",
                          "--rows", "1", "3", "--variants", "fp32", "--kernels", "3", "--top", "5", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["tokens"] == 12
    batches = report["batches"]
    for rows in (1, 3):
        assert batches[f"fp32_rows{rows}_s"] > 0
        assert batches[f"fp32_rows{rows}_x_real_time"] == rows * 11 / 25 / batches[f"fp32_rows{rows}_s"]
        stages = batches[f"fp32_rows{rows}_stages_ms"]  # the flow's encoder, its CFM loop, HiFT: each ran, timed
        assert list(stages) == ["encoder", "cfm", "hift"] and all(ms > 0 for ms in stages.values())
    kernels = batches["kernels"]
    assert (kernels["rows"], kernels["variant"], kernels["device"]) == (3, "fp32", "cpu")
    top = kernels["top"]
    assert 0 < len(top) <= 5 and kernels["distinct_kernels"] >= len(top)
    assert [k["total_ms"] for k in top] == sorted((k["total_ms"] for k in top), reverse=True)
    assert all(k["calls"] >= 1 and 0 <= k["share"] <= 1 for k in top)
    assert sum(k["share"] for k in top) <= 1 + 1e-9
    assert abs(top[0]["share"] - top[0]["total_ms"] / kernels["kernel_time_ms"]) < 1e-9
    assert kernels["kernels_run"] >= sum(k["calls"] for k in top)
    assert kernels["host_launch_calls"] == 0  # no CUDA on this machine: no launches to count
