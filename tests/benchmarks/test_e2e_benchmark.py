"""The end-to-end benchmark runs on a CPU with the tiny model (the GPU figures come from the same code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
E2E = [sys.executable, "-m", "benchmarks.e2e"]  # with cwd=REPO
HEADLINE = ("rtf_single_paragraph", "ttfb_ms_sentence", "t3_tok_per_s_1_stream")


def test_quick_run_then_report(tmp_path: Path) -> None:
    env = {**os.environ, "CHATTERBOX_CACHE_DIR": str(tmp_path / "cache"), "CHATTERBOX_GPU_MEMORY_GIB": "1",
           "CHATTERBOX_MAX_MODEL_LEN": "1024"}  # fmt: skip
    run = subprocess.run([*E2E, "run", "--model", "random-tiny", "--quick", "--sweep", "1", "8",
                          "--out", str(tmp_path / "run.json")],
                         capture_output=True, text=True, cwd=REPO, timeout=900, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([*E2E, "report", "--run", str(tmp_path / "run.json"),
                             "--out", str(tmp_path / "results.json"), "--plots", str(tmp_path / "plots")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    summary = results["summary"]
    for key in HEADLINE:
        assert isinstance(summary[key], float) and summary[key] > 0, key
        assert results[key] == summary[key]  # results files carry the headline keys at the top level
    assert summary["device"].startswith("CPU") and summary["command"].startswith("python ")
    assert summary["rtf_aggregate_64"] is None  # not measured in this sweep, and said so
    assert abs(results["switch_interval_s"] - 0.0002) < 1e-9  # the server's GIL switch interval, as it runs
    sweep = results["http"]["sweep"]
    assert [s["concurrency"] for s in sweep] == [1, 8] and all(s["failed"] == 0 for s in sweep)
    assert all(s["audio_s"] > 0 for s in sweep)
    # where a lone sentence's first audio time went, step by step in order
    marks = results["first_audio"]["median_ms"]
    order = ["prepared", "t3_first_token", "t3_token_10", "s3gen_partial_queued", "s3gen_partial_started",
             "s3gen_partial_ran", "s3gen_partial_done", "first_audio"]  # fmt: skip
    assert set(order) <= set(marks), marks
    assert all(marks[a] <= marks[b] for a, b in zip(order, order[1:])) and marks["prompt_embeds"] > 0
    for level in sweep:  # where the level's time went, from the server's own metrics
        server = level["server"]
        assert server["prompt_embeds_count"] == level["concurrency"]  # one piece each, timed on the event loop
        assert 0 < server["prompt_embeds_median_ms"] <= server["prompt_embeds_max_ms"]
        assert server["s3gen_batches"] >= 1 and server["s3gen_mean_batch_rows"] >= 1
        assert 0 < server["s3gen_busy_fraction"] < 1.01 and server["t3_mean_inter_token_ms"] > 0
    # S3Gen's work items beyond its batches of whole pieces are batches of partial vocodes: a lone request makes
    # them (first audio sooner), and so does every request of a burst of 8 (batched together: at least one batch)
    partials = [level["server"]["s3gen_work_items"] - level["server"]["s3gen_batches"] for level in sweep]
    assert partials[0] >= 1 and partials[1] >= 1, partials
    paragraph = results["paragraph"]
    assert paragraph["audio_s"] > 0 and paragraph["first_audio_s_median"] < paragraph["wall_s_median"]
    stages = results["stages"]
    assert all(stages[k] > 0 for k in ("t3_s", "s3gen_flow_s", "hift_s", "mp3_encode_s", "audio_s"))
    for name in ("sweep.png", "stages.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
