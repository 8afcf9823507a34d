"""The first-audio stages diagnostic runs end to end on a CPU with the tiny model: one real `chatterbox-vllm serve`,
bursts of streamed sentences at 1 and at a higher concurrency, each burst with the server's own stage means. The
times mean something only on the GPU; here the test checks that each stage was timed by the server for the burst's
requests and that the stages fit inside the first byte the client saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_each_burst_reports_the_servers_stages_of_first_audio(tmp_path: Path) -> None:
    env = {**os.environ, "CHATTERBOX_GPU_MEMORY_GIB": "1", "CHATTERBOX_MAX_MODEL_LEN": "1024"}
    out = tmp_path / "stages.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.first_audio_stages", "--model", "random-tiny",
                          "--preset", "low", "--concurrency", "2", "--bursts", "1", "--work", str(tmp_path / "work"),
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=1200, env=env)  # fmt: skip
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m benchmarks.first_audio_stages")
    for level in ("c1", "c2"):
        burst = report[level]["bursts"][0]
        assert burst["failed"] == 0
        stages = burst["first_audio_stages_ms"]
        assert set(stages) == {"prepare", "t3", "s3gen"} and all(ms > 0 for ms in stages.values()), stages
        # the server's stages happen inside the client's wait for its first byte
        assert stages["prepare"] + stages["t3"] + stages["s3gen"] < burst["ttfb_p95_ms"]
        # over the level: its unmeasured burst and the measured one, each request's first partial timed once
        assert report[level]["metrics_delta"]["first_audio_s3gen_n"] == 2 * int(level[1:])
