"""benchmarks/voice_clone.py runs on a CPU with the tiny model (the figures in BENCHMARKS.md come from the same
code with more rounds); nothing here is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_one_round_of_uploads_and_first_requests(tmp_path: Path) -> None:
    env = {**os.environ, "CHATTERBOX_CACHE_DIR": str(tmp_path / "cache"), "CHATTERBOX_GPU_MEMORY_GIB": "1",
           "CHATTERBOX_MAX_MODEL_LEN": "512"}  # fmt: skip
    out = tmp_path / "clone.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.voice_clone", "--model", "random-tiny",
                          "--device", "cpu", "--rounds", "1", "--tokens", "10", "--clip-seconds", "3",
                          "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=900, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["variant"] == "english" and report["device"].startswith("CPU")
    assert report["command"].startswith("python -m benchmarks.voice_clone ") and report["tokens_per_request"] == 10
    [only] = report["rounds"]
    assert only["upload_s"] > 0
    for kind in ("builtin", "clone_first", "clone_again", "dropped_in_first"):
        assert 0 < only[kind]["ttfb_s"] <= only[kind]["wall_s"], kind
        assert 0 < only[kind]["audio_s"] <= 10 * 0.04, kind  # at most the 10 tokens asked for
    for part in ("first_round", "median"):  # one round: both are that round's figures
        figures = report["summary"][part]
        assert figures["upload_ms"] == 1000 * only["upload_s"]
        assert figures["clone_first_ttfb_ms"] == 1000 * only["clone_first"]["ttfb_s"]
        assert figures["clone_first_minus_builtin_wall_ms"] == pytest.approx(
            1000 * (only["clone_first"]["wall_s"] - only["builtin"]["wall_s"]))
    assert "first request with a new clone" in run.stdout
