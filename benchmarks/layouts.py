"""Issue 20, step 3 ("no contention"): S3Gen on a thread of the server (CHATTERBOX_S3GEN_LAYOUT=thread) against S3Gen
in a worker process of its own (=process), side by side on one machine, the server as users start it.

For each layout in turn, `chatterbox-vllm serve` (headline.py's `ServerProcess`: the same command, environment and
token cap) with CHATTERBOX_S3GEN_LAYOUT set, then headline.py's `measure_throughput` at `--concurrency` (64): one
unmeasured burst, then `--bursts` measured ones. Per layout: x real time (audio seconds received / wall seconds, the
median burst), failures, first-byte p50/p95, and from the server's /metrics S3Gen's busy share of the bursts' wall
time (chatterbox_s3gen_work_seconds_sum: the thread's work, or in the process layout the child's, reported to the
server), audio seconds per S3Gen busy second and mean rows per batch; /health's `s3gen` entry (pid, restarts).

`--env KEY=VALUE` sets more of the servers' settings (recorded in each server's `set_env`), so one call can compare a
setting's values on one layout. The layouts share one cache directory (--work/cache): the first start of a machine compiles, the others reuse it,
so ready_s compares only after a first call. `--layouts` picks the order (default thread, then process).

    python -m benchmarks.layouts --model /root/ckpt/english --preset high --out layouts.json
    python -m benchmarks.layouts --quick --model random-tiny --out /tmp/layouts.json      # CPU smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.headline import ServerProcess, measure_throughput, requests
from benchmarks.host import command_line, device_name
from benchmarks.texts import SENTENCE_TOKENS

LAYOUTS = ("thread", "process")


def median_of(levels: list[dict[str, Any]], key: str) -> float | None:
    values = [level[key] for level in levels if level.get(key) is not None]
    return statistics.median(values) if values else None


def measure_layout(layout: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One server in `layout`: its start, then bursts of `args.concurrency` sentences."""
    cap = None if args.no_token_cap else SENTENCE_TOKENS
    server = ServerProcess(args.model, args.preset, work / "cache", work / f"{layout}.log", cap)
    for key, value in [("CHATTERBOX_S3GEN_LAYOUT", layout), *(item.split("=", 1) for item in args.env)]:
        server.set_env[key] = value  # recorded in the report's `server.set_env`
        server.env[key] = value
    out: dict[str, Any] = {"layout": layout}
    with server:
        out["server"] = server.describe()
        out["s3gen"] = httpx.get(f"{server.url}/health", timeout=10).json()["models"][0].get("s3gen")
        requests(server.url, 1)  # the first request of a server pays for lazy work
        load = measure_throughput(server.url, args.concurrency, args.bursts)
        out["throughput"] = load
        levels = load["bursts"]
        out["figures"] = {
            "x_rt": load["x_rt"],
            "failed": load["failed"],
            "s3gen_busy_share": statistics.median(lv["server"]["s3gen_busy_fraction"] or 0.0 for lv in levels),
            "s3gen_audio_s_per_busy_s": load["s3gen_audio_s_per_busy_s"],
            "s3gen_mean_batch_rows": load["s3gen_mean_batch_rows"],
            "ttfb_ms_p50": median_of(levels, "ttfb_p50_ms"),
            "ttfb_ms_p95": median_of(levels, "ttfb_p95_ms"),
            "ready_s": server.ready_s,
        }
        out["s3gen_after"] = httpx.get(f"{server.url}/health", timeout=10).json()["models"][0].get("s3gen")
    print(layout, json.dumps(out["figures"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="english")
    parser.add_argument("--preset", default="high")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--no-token-cap", action="store_true", help="real weights: T3 stops on its own")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: 2 concurrent, 1 burst")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings for every server of the run, e.g. CHATTERBOX_STREAM_PARTIALS_MAX_ACTIVE=16")
    parser.add_argument("--work", default="/tmp/layouts-work", help="logs and the shared cache directory")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.bursts = 2, 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": device_name(), "date": dt.date.today().isoformat(), "model": args.model,
                              "preset": args.preset, "concurrency": args.concurrency, "command": command_line(), "layouts": []}  # fmt: skip
    out = Path(args.out)
    started = time.perf_counter()
    for layout in args.layouts:
        try:
            report["layouts"].append(measure_layout(layout, args, work))
        except Exception as exc:  # the other layout still runs; what failed is in the report and its log
            report["layouts"].append({"layout": layout, "error": f"{type(exc).__name__}: {exc}"[:3000]})
            print(layout, "failed:", exc, flush=True)
        report["wall_s"] = time.perf_counter() - started
        out.write_text(json.dumps(report, indent=2))  # after each layout: a call cut short keeps the first


if __name__ == "__main__":
    main()
