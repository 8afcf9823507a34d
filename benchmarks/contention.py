"""Do T3 (vLLM's engine core, a process of its own) and S3Gen (the server's process) slow each other down on one GPU?

The server's S3Gen timings came out ~2x those of S3Gen alone (first partial vocode 179 ms in the server vs 77 ms
alone on 2026-11-28). Candidates: the GPU time-slicing between the two processes' CUDA contexts (kernels of two
processes never run at once without MPS), or the GIL of the server's process. This times S3Gen's first partial
vocode and a batch of 16 sentences, and T3's decode rate, each alone, beside the other, and beside a pure-Python
busy thread (the GIL alone):

    python -m benchmarks.contention --model /ckpt/english --out contention.json [--label plain|mps]

Run it once as is and once under NVIDIA MPS (`nvidia-cuda-mps-control -d` first) to see what sharing the GPU's
SMs between the processes buys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import ChatterboxTTS, VocodeJob

SENTENCE_TOKENS = 75


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `fn` (GPU work finished)."""
    values = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


class Background:
    """Runs `work` in a thread until stopped; counts how much it did."""

    def __init__(self, work: Callable[[], int]) -> None:
        self.work = work
        self.done = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            self.done += self.work()
        self.seconds = time.perf_counter() - start

    def __enter__(self) -> "Background":
        self._thread.start()
        time.sleep(0.3)  # in full swing before anything is timed
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def s3gen_workload(tts: ChatterboxTTS) -> tuple[Callable[[], None], Callable[[], None]]:
    """The two S3Gen calls timed here: a stream's first partial vocode (10 tokens) and a batch of 16 sentences."""
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, 6561, (SENTENCE_TOKENS,), generator=g).tolist() for _ in range(16)]
    jobs = [VocodeJob(t, tts.default_conds, seed=i) for i, t in enumerate(tokens)]

    def partial() -> None:
        tts.vocode(tokens[0][:10], tts.default_conds, seed=0)

    def batch16() -> None:
        tts.vocode_batch(jobs)

    return partial, batch16


def python_busy() -> int:
    """Pure Python for ~1 ms: what a busy event loop does to the GIL."""
    total = 0
    for i in range(20_000):
        total += i * i
    return 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--label", default="plain")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--t3-tokens", type=int, default=400)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = Settings(model=args.model, preset="high", max_batch_size=64, device=args.device)
    tts = ChatterboxTTS.from_settings(settings)
    tts.warm_up_s3gen(400)
    conds = tts.default_conds
    partial, batch16 = s3gen_workload(tts)
    text = tts.text_tokens("The quick brown fox jumps over the lazy dog, twice, before breakfast.").to(tts.device)

    def t3_streams(streams: int, new_tokens: int) -> Callable[[], int]:
        async def many() -> int:
            async def one(i: int) -> int:
                params = SamplingParams(max_new_tokens=new_tokens, seed=i)
                return len([t async for t in tts.engine.stream_async(text, conds.t3, params)])

            return sum(await asyncio.gather(*(one(i) for i in range(streams))))

        return lambda: asyncio.run(many())

    def s3gen_figures() -> dict[str, float]:
        return {"partial_10_tokens_ms": 1000 * timed(partial, 7), "batch16_ms": 1000 * timed(batch16, 3)}

    with torch.inference_mode():
        for fn in (partial, batch16):  # graphs of these shapes captured, compiled blocks warm
            fn()
        t3_streams(1, 16)()
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        report: dict[str, Any] = {"label": args.label, "device": device}
        report["s3gen_alone"] = s3gen_figures()
        for streams in (1, 64):
            start = time.perf_counter()
            count = t3_streams(streams, args.t3_tokens)()
            report[f"t3_{streams}_alone_tok_s"] = count / (time.perf_counter() - start)
        print(json.dumps(report), flush=True)
        for streams in (1, 64):
            with Background(t3_streams(streams, args.t3_tokens)) as t3:
                report[f"s3gen_beside_t3_{streams}"] = s3gen_figures()
            report[f"t3_{streams}_beside_s3gen_tok_s"] = t3.rate  # includes gaps between rounds
        with Background(python_busy):
            report["s3gen_beside_python_thread"] = s3gen_figures()
        with Background(lambda: (batch16(), sync(), 1)[-1]):
            for streams in (1, 64):
                start = time.perf_counter()
                count = t3_streams(streams, args.t3_tokens)()
                report[f"t3_{streams}_beside_s3gen_batches_tok_s"] = count / (time.perf_counter() - start)
    print(json.dumps(report), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    tts.close()


if __name__ == "__main__":
    main()
