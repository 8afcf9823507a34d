"""The headline benchmark runs end to end on a CPU with the tiny models, against real server subprocesses started
as users start them (the GPU figures come from the same code), and its report and table carry every figure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEADLINE = [sys.executable, "-m", "benchmarks.headline"]  # with cwd=REPO
FIGURES = ("t3_tok_per_s_1", "paragraph_x_rt", "ttfb_ms_p50_c1", "ttfb_ms_p95_c16", "x_rt_c64", "failed_c64",
           "turbo_x_rt_c64", "s3gen_beside_t3_ratio", "s3gen_alone_x_rt", "ready_s_cold", "ready_s_warm",
           "peak_vram_gib_low_multilingual")  # fmt: skip


def test_quick_run_report_and_table(tmp_path: Path) -> None:
    env = {**os.environ, "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "1024",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # fmt: skip  (set to show that the server does not get it)
    work, results = tmp_path / "work", tmp_path / "results"
    run = subprocess.run([*HEADLINE, "run", "--quick", "--model", "random-tiny",
                          "--turbo-model", "random-tiny-turbo", "--multilingual-model", "random-tiny-multilingual",
                          "--work", str(work), "--out-dir", str(results)],
                         capture_output=True, text=True, cwd=REPO, timeout=1800, env=env)  # fmt: skip
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    [path] = results.iterdir()
    report = json.loads(path.read_text())
    assert path.name == f"cpu-{report['date']}-headline.json"
    for key in FIGURES:
        assert isinstance(report[key], (int, float)) and math.isfinite(report[key]), key
    assert report["device"].startswith("CPU") and report["command"].startswith("python ") and report["quick"]
    # what each figure says about the runs behind it
    assert report["failed_c64"] == 0 and report["x_rt_c64"] > 0 and report["turbo_x_rt_c64"] > 0
    assert 0 < report["ttfb_ms_p50_c1"] and 0 < report["ttfb_ms_p95_c16"]
    assert report["ready_s_cold"] > 0 and report["ready_s_warm"] > 0
    assert report["t3_tok_per_s_1"] > 0 and report["english"]["t3_one_stream"]["method"].startswith("vllm:")
    assert report["paragraph_x_rt"] > 0 and report["english"]["paragraph"]["audio_s"] > 5
    assert report["s3gen_alone_x_rt"] == max(report["s3gen"]["x_rt_by_batch"].values())
    beside = report["english"]["c64"]["bursts"][0]["server"]
    assert beside["s3gen_busy_s"] > 0 and beside["audio_s"] > 0
    assert math.isclose(report["s3gen_beside_t3_ratio"],
                        report["s3gen_beside"]["audio_s_per_busy_s"] / report["s3gen_alone_x_rt"])  # fmt: skip
    assert report["multilingual"]["method"] == "cpu_rss" and report["peak_vram_gib_low_multilingual"] > 0.1
    # the servers ran as users start them: `serve` with model, preset and port, vLLM's default multiprocessing
    cold = report["english"]["cold_server"]
    assert "chatterbox_vllm.cli serve --model random-tiny --preset high --port" in cold["command"]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in cold["env"] and cold["env"]["CHATTERBOX_GPU_MEMORY_GIB"] == "1"
    assert cold["set_env"]["CHATTERBOX_MAX_NEW_TOKENS"] == "75"  # the stand-in for the stop token, said so
    # where each start's time went, from the server's /health: its one model's phases
    [started] = cold["startup"].values()
    assert started["phases_s"]["t3_engine"] > 0 and started["s3gen"] is None  # a CPU server: S3Gen on a thread
    logs = {log.name: log.read_text() for log in work.glob("*.log")}
    assert set(logs) == {"english-cold.log", "english-warm.log", "turbo.log", "multilingual-low.log"}
    assert all("EngineCore" in text for text in logs.values())  # vLLM's engine core in a process of its own
    # the cold start filled the cache directory the warm one started with: vLLM's and Inductor's caches
    warm = report["english"]["warm_server"]["set_env"]
    assert warm["XDG_CACHE_HOME"] == cold["set_env"]["XDG_CACHE_HOME"] == report["english"]["cache_dir"]
    assert {"torchinductor", "chatterbox-vllm"} <= {p.name for p in Path(warm["XDG_CACHE_HOME"]).iterdir()}
    # vLLM's cache root is the server's own choice: under its cache directory (`compile_cache`)
    # (the server says so at start; on a CPU vLLM may write nothing there, so the directory proves nothing)
    vllm_root = Path(warm["CHATTERBOX_CACHE_DIR"]) / "compile" / "vllm"
    assert f"compile caches: vLLM {vllm_root}," in logs["english-warm.log"]

    table = subprocess.run([*HEADLINE, "table", "--report", str(path)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert table.returncode == 0, table.stderr[-3000:]
    lines = table.stdout.strip().splitlines()
    assert lines[0].startswith("| figure | target | 2026-12-01 | latest") and len(lines) == 2 + len(FIGURES)
    assert "| T3 tokens/s, one stream with CFG | ≥ 1,000 | 430 |" in lines[2]
    assert all(row.rstrip(" |").endswith(("✓", "✗")) for row in lines[2:])


def test_merge_refuses_a_failed_or_missing_part(tmp_path: Path) -> None:
    part = {"part": "english", "error": "TimeoutError: the server was not ready after 900 s", "device": "CPU",
            "date": "2026-12-02", "command": "python x", "quick": True}  # fmt: skip
    parts = tmp_path / "p1.json"
    parts.write_text(json.dumps([part]))
    merge = subprocess.run([*HEADLINE, "merge", "--parts", str(parts), "--out-dir",
                            str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert merge.returncode != 0 and "english: TimeoutError" in merge.stderr
    parts.write_text(json.dumps([{**part, "error": None, "figures": {}}]))
    merge = subprocess.run([*HEADLINE, "merge", "--parts", str(parts), "--out-dir",
                            str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert merge.returncode != 0 and "missing parts: multilingual, s3gen, turbo" in merge.stderr
    assert not (tmp_path / "out").exists()


def test_merge_writes_a_partial_report_only_when_asked(tmp_path: Path) -> None:
    """With --allow-missing the parts that ran give their figures, the others are null and named, and the file says
    partial; a figure that is not a finite number is still refused."""
    part = {"part": "english", "error": None, "device": "CPU", "date": "2026-12-03", "command": "python x",
            "quick": True, "figures": {"x_rt_c64": 2.5, "failed_c64": 0},
            "c64": {"s3gen_audio_s_per_busy_s": 3.0, "s3gen_mean_batch_rows": 2.0}}  # fmt: skip
    parts = tmp_path / "p1.json"
    parts.write_text(json.dumps([part]))
    command = [*HEADLINE, "merge", "--parts", str(parts), "--out-dir", str(tmp_path / "out"), "--allow-missing"]
    merge = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert merge.returncode == 0, merge.stderr
    report = json.loads((tmp_path / "out" / "cpu-2026-12-03-headline-partial.json").read_text())
    assert report["missing_parts"] == ["multilingual", "s3gen", "turbo"]
    assert report["x_rt_c64"] == 2.5 and report["turbo_x_rt_c64"] is None and report["s3gen_beside_t3_ratio"] is None
    assert not (tmp_path / "out" / "cpu-2026-12-03-headline.json").exists()
    parts.write_text(json.dumps([{**part, "figures": {"x_rt_c64": float("nan")}}]))
    merge = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert merge.returncode != 0 and "figures without a number: x_rt_c64" in merge.stderr
