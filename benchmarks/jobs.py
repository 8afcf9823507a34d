"""Issue 22, point 3: long-form jobs are fair to interactive users, and a job alone uses the whole machine.

One server as users start it (headline.py's `ServerProcess`: `chatterbox-vllm serve`, preset high, the sentence
token cap that stands in for random weights' missing stop token), with its data directory under --work. Then:

1. idle: single sentences at `--rate` requests a second (each sent on the clock, not after the last one ends),
   `--requests` of them: first audio byte p50/p95;
2. the same while one long job runs (a book-length text, `--job-chars` characters of benchmarks/texts.PARAGRAPH):
   first audio byte p50/p95 and their ratio to idle (target: p50 within 1.2x);
3. the job alone for `--window` seconds: audio seconds it made (GET .../jobs/{id}, `audio_seconds`) per wall
   second: `job_alone_x_rt`;
4. `--concurrency` (64) concurrent sentences (headline.py's `measure_throughput`): `x_rt_c64`, and the ratio of the
   job's speed to it (target: >= 1, the job reaches the 64-concurrent aggregate speed).

    python -m benchmarks.jobs --model /root/ckpt/english --out jobs.json             # on the GPU machine
    python -m benchmarks.jobs --quick --model random-tiny --out /tmp/jobs.json       # CPU smoke (no figures)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.headline import ServerProcess, measure_throughput, requests, wait_idle
from benchmarks.host import command_line, device_name
from benchmarks.http_load import one_request, pct
from benchmarks.texts import PARAGRAPH, SENTENCE_TOKENS

JOBS = "/v1/audio/speech/jobs"


async def paced_ttfb(url: str, rate: float, count: int) -> dict[str, Any]:
    """`count` single sentences, one every 1/`rate` seconds whatever the earlier ones are doing: first-byte times."""
    async with httpx.AsyncClient(timeout=600) as client:
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.create_task(one_request(client, url, "pcm")))
            await asyncio.sleep(1.0 / rate)
        results = await asyncio.gather(*tasks)
    values = sorted(1000 * r["ttfb_s"] for r in results if r["ok"] and r["ttfb_s"] is not None)
    return {"ttfb_ms_all": values, "ttfb_ms_p50": pct(values, 0.5), "ttfb_ms_p95": pct(values, 0.95),
            "failed": count - len(values)}  # fmt: skip


def job_state(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}{JOBS}/{job_id}", timeout=30)
    response.raise_for_status()
    return response.json()


def start_job(url: str, chars: int) -> dict[str, Any]:
    text = " ".join([PARAGRAPH] * (chars // (len(PARAGRAPH) + 1) + 1))[:chars]
    response = httpx.post(f"{url}{JOBS}", timeout=120, json={
        "model": "tts-1", "voice": "alloy", "input": text, "response_format": "mp3", "title": "benchmark"})  # fmt: skip
    response.raise_for_status()
    return response.json()


def wait_pieces(url: str, job_id: str, pieces: int, timeout_s: float = 600) -> dict[str, Any]:
    """Until the job has `pieces` pieces done (it is then past its start-up, in its steady state)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_state(url, job_id)
        if state["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"the job ended {state['status']}: {state.get('error')}")
        if state["pieces_done"] >= pieces or state["status"] == "completed":
            return state
        time.sleep(0.2)
    raise TimeoutError(f"the job made fewer than {pieces} pieces in {timeout_s:.0f} s")


def job_alone(url: str, job_id: str, window_s: float) -> dict[str, Any]:
    """The job's own speed with nothing else on the server: audio seconds made per wall second over the window,
    from the moment the server no longer counts speech requests as recent (jobs yield to requests until then)."""
    from chatterbox_vllm.server.admission import REQUESTS_QUIET_S

    wait_idle(url)
    time.sleep(REQUESTS_QUIET_S)
    first, t0 = job_state(url, job_id), time.perf_counter()
    time.sleep(window_s)
    last, t1 = job_state(url, job_id), time.perf_counter()
    audio = last["audio_seconds"] - first["audio_seconds"]
    return {"window_s": t1 - t0, "audio_s": audio, "pieces": last["pieces_done"] - first["pieces_done"],
            "x_rt": audio / (t1 - t0), "finished_in_window": last["status"] == "completed"}  # fmt: skip


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cap = None if args.no_token_cap else SENTENCE_TOKENS
    server = ServerProcess(args.model, args.preset, work / "cache", work / "jobs-server.log", cap)
    data_dir = str(work / "data")
    server.set_env["CHATTERBOX_DATA_DIR"] = server.env["CHATTERBOX_DATA_DIR"] = data_dir
    out: dict[str, Any] = {}
    with server:
        out["server"] = server.describe()
        requests(server.url, 1)  # the first request of a server pays for lazy work
        out["idle"] = asyncio.run(paced_ttfb(server.url, args.rate, args.requests))
        print("idle", out["idle"]["ttfb_ms_p50"], flush=True)
        job = start_job(server.url, args.job_chars)
        wait_pieces(server.url, job["id"], args.warm_pieces)
        out["beside_job"] = asyncio.run(paced_ttfb(server.url, args.rate, args.requests))
        print("beside a job", out["beside_job"]["ttfb_ms_p50"], flush=True)
        out["job_alone"] = job_alone(server.url, job["id"], args.window)
        print("job alone", json.dumps(out["job_alone"]), flush=True)
        out["job"] = job_state(server.url, job["id"])
        httpx.delete(f"{server.url}{JOBS}/{job['id']}", timeout=60).raise_for_status()
        out["c64"] = measure_throughput(server.url, args.concurrency, args.bursts)
    idle, beside = out["idle"]["ttfb_ms_p50"], out["beside_job"]["ttfb_ms_p50"]
    out["figures"] = {
        "ttfb_ms_p50_idle": idle,
        "ttfb_ms_p50_beside_job": beside,
        "ttfb_p50_ratio": beside / idle if idle and beside else None,  # target <= 1.2
        "job_alone_x_rt": out["job_alone"]["x_rt"],
        "x_rt_c64": out["c64"]["x_rt"],
        "job_alone_over_c64": out["job_alone"]["x_rt"] / out["c64"]["x_rt"] if out["c64"]["x_rt"] else None,
        "failed": out["idle"]["failed"] + out["beside_job"]["failed"] + out["c64"]["failed"],
    }
    print("figures", json.dumps(out["figures"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="english")
    parser.add_argument("--preset", default="high")
    parser.add_argument("--rate", type=float, default=1.0, help="interactive sentences a second")
    parser.add_argument("--requests", type=int, default=30, help="interactive sentences per measurement")
    parser.add_argument("--job-chars", type=int, default=300_000)
    parser.add_argument("--warm-pieces", type=int, default=64, help="pieces the job makes before it is measured")
    parser.add_argument("--window", type=float, default=30.0, help="seconds the job runs alone, measured")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--no-token-cap", action="store_true", help="real weights: T3 stops on its own")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: few requests, a short window")
    parser.add_argument("--work", default="/tmp/jobs-work", help="logs, caches and the server's data directory")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.quick:
        # the window long enough for a CPU to finish a batch of the pieces held back while requests came
        args.requests, args.job_chars, args.warm_pieces, args.window = 3, 20_000, 1, 15.0
        args.concurrency, args.bursts, args.rate = 2, 1, 0.5
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": device_name(), "date": dt.date.today().isoformat(), "model": args.model,
                              "preset": args.preset, "command": command_line(), "quick": args.quick}  # fmt: skip
    started = time.perf_counter()
    report.update(measure(args, work))
    report["wall_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report["figures"][k] for k in report["figures"]}), flush=True)


if __name__ == "__main__":
    main()
