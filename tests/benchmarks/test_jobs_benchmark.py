"""The long-form jobs benchmark (issue 22's fairness and job-speed figures) runs end to end on a CPU with the tiny
model: one real `chatterbox-vllm serve`, sentences at a steady rate idle and beside a running job, the job alone,
then concurrent sentences. The figures mean something only on the GPU; here the test checks that every one is
measured from real requests and the job really ran."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("ttfb_ms_p50_idle", "ttfb_ms_p50_beside_job", "ttfb_p50_ratio", "job_alone_x_rt", "x_rt_c64",
           "job_alone_over_c64")  # fmt: skip


def test_quick_run_measures_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "1024"}
    out = tmp_path / "jobs.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.jobs", "--quick", "--model", "random-tiny",
                          "--work", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=1500, env=env)  # fmt: skip
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    report = json.loads(out.read_text())
    figures = report["figures"]
    for key in FIGURES:
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["failed"] == 0 and report["quick"] and report["command"].startswith("python -m benchmarks.jobs")
    # the job ran while the interactive sentences were measured beside it, and made audio alone afterwards
    assert report["job"]["pieces_done"] >= 1 and report["job_alone"]["audio_s"] > 0
    assert len(report["beside_job"]["ttfb_ms_all"]) == len(report["idle"]["ttfb_ms_all"]) == 3
    # the server kept its jobs in the data directory the benchmark gave it, and the job is deleted at the end
    assert report["server"]["set_env"]["CHATTERBOX_DATA_DIR"] == str(tmp_path / "work" / "data")
    assert (tmp_path / "work" / "data" / "jobs.sqlite3").is_file()
    assert not any((tmp_path / "work" / "data" / "jobs").glob("job_*/*.flac"))
