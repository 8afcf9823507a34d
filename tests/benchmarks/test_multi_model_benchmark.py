"""benchmarks/multi_model.py runs on a CPU with two tiny models in the PyTorch engine (the GPU figures come from
the same code with vLLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_two_models_alone_and_together(tmp_path: Path) -> None:
    env = {**os.environ, "CHATTERBOX_CACHE_DIR": str(tmp_path / "cache"), "CHATTERBOX_ENGINE": "torch",
           "CHATTERBOX_DEVICE": "cpu"}  # fmt: skip
    out = tmp_path / "multi.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.multi_model", "--models", "random-tiny",
                          "random-tiny-turbo", "--concurrency", "2", "--tokens", "20", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=600, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    ids = ["chatterbox-english", "chatterbox-turbo"]
    assert [m["id"] for m in report["models"]] == ids and all(m["status"] == "ready" for m in report["models"])
    for model in ids:
        alone = report["alone"][model]["models"][model]
        assert alone["failed"] == 0 and alone["served_by"] == [model] and alone["rtf"] > 0
        assert 0 < alone["audio_s"] <= 2 * (20 + 3) * 0.04  # at most 20 tokens (+ Turbo's 3 of silence) each
        together = report["mixed"]["models"][model]
        assert together["requests"] == 2 and together["failed"] == 0 and together["served_by"] == [model]
    assert report["mixed"]["rtf_aggregate"] > 0 and "device_memory" not in report  # no GPU here
    assert report["command"].startswith("python -m benchmarks.multi_model ") and report["device"].startswith("CPU")
