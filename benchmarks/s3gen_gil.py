"""S3Gen beside busy Python threads: how much the GIL slows its kernel launches, per GIL switch interval.

benchmarks/contention.py found S3Gen's first partial vocode 175x slower beside a thread running pure Python
(82 ms -> 14 s on an H100): each eager kernel launch needs the GIL, and a busy thread keeps it for Python's whole
switch interval (5 ms, the default, measured there). The server's event loop and vLLM's output thread are such
threads under load. This times S3Gen alone and beside one busy thread at several switch intervals (no vLLM
needed: T3 loads in PyTorch):

    python -m benchmarks.s3gen_gil --model /ckpt/english --out gil.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contention import Background, python_busy, s3gen_workload, timed  # noqa: E402

from chatterbox_vllm.tts import ChatterboxTTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.001, 0.0002, 0.00005])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tts = ChatterboxTTS.from_local(args.model, device="cuda", engine="torch")
    tts.warm_up_s3gen(100)
    partial, batch16 = s3gen_workload(tts)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with torch.inference_mode():
        partial(), batch16()
        report["alone"] = {"partial_ms": 1000 * timed(partial, 7), "batch16_ms": 1000 * timed(batch16, 3)}
        print(json.dumps(report), flush=True)
        for interval in args.intervals:
            sys.setswitchinterval(interval)
            with Background(python_busy):
                report[f"beside_busy_thread_switch_{interval:g}"] = {
                    "partial_ms": 1000 * timed(partial, 1), "batch16_ms": 1000 * timed(batch16, 1)}  # fmt: skip
            print(json.dumps(report), flush=True)
        sys.setswitchinterval(0.005)
        # A copy on the default stream while S3Gen's worker thread has GPU work queued on its own stream
        from chatterbox_vllm.server.s3gen_worker import S3GenWorker

        worker = S3GenWorker(tts, max_batch=8)
        (torch.arange(16, device="cuda") * 2).cpu()  # this thread's allocations cached first
        worker.call(torch.cuda._sleep, 2_000_000_000).result()
        start = time.perf_counter()
        (torch.arange(16, device="cuda") * 2).cpu()
        copy_s = time.perf_counter() - start
        worker.call(lambda: torch.cuda.current_stream().synchronize()).result()
        report["stream_check"] = {"copy_s": copy_s, "sleep_s": time.perf_counter() - start,
                                  "worker_stream": str(worker.stream)}  # fmt: skip
        worker.shutdown()
    print(json.dumps(report), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
