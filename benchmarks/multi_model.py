"""Several models in one server (CHATTERBOX_EXTRA_MODELS): what the VRAM plan gave each, the device memory they
hold together, and their speed alone and side by side, through the real app over HTTP.

    python -m benchmarks.multi_model --models /ckpt/multilingual /ckpt/turbo --preset high \
        --vram-budget-gib 22 --concurrency 16 --out multi.json          # a 24 GB card's budget on a bigger GPU
    CHATTERBOX_ENGINE=torch python -m benchmarks.multi_model --models random-tiny random-tiny-turbo \
        --concurrency 2 --tokens 20 --out multi.json                    # CPU smoke (CI)

Random weights rarely sample the stop token, so every request is capped at `--tokens` speech tokens (75: the
3 s sentence of benchmarks/texts.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from benchmarks.e2e import HTTPServer, PeakDeviceMemory
from benchmarks.host import command_line, device_name
from benchmarks.texts import SENTENCE, SENTENCE_TOKENS

from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import SAMPLE_RATE


def wait_loaded(url: str, timeout_s: float = 1800) -> dict[str, Any]:
    """/health once no model is loading any more (200: all serve; 503: one failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            health = httpx.get(f"{url}/health", timeout=10).json()
            if health["status"] != "loading":
                return health
        time.sleep(0.5)
    raise TimeoutError("the models did not load in time")


async def speak(client: httpx.AsyncClient, url: str, model: str) -> dict[str, Any]:
    """One sentence as pcm for `model`: seconds to the first byte and to the end, audio seconds."""
    start = time.perf_counter()
    first = None
    size = 0
    body = {"model": model, "input": SENTENCE, "voice": "alloy", "response_format": "pcm"}
    async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
        if response.status_code != 200:
            return {"ok": False, "model": model, "status": response.status_code, "error": (await response.aread())[:200].decode()}
        served_by = response.headers.get("x-chatterbox-model")
        async for chunk in response.aiter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - start
            size += len(chunk)
    return {"ok": True, "model": served_by, "ttfb_s": first, "wall_s": time.perf_counter() - start,
            "audio_s": size / 2 / SAMPLE_RATE}  # fmt: skip


async def together(url: str, models: list[str]) -> dict[str, Any]:
    """All of `models` (one request each, names may repeat) at once; per served model: audio per wall second."""
    limits = httpx.Limits(max_connections=len(models) + 4, max_keepalive_connections=len(models) + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(speak(client, url, model) for model in models))
        wall = time.perf_counter() - start
    per_model: dict[str, Any] = {}
    for name in dict.fromkeys(models):
        mine = [r for r, asked in zip(results, models) if asked == name]
        ok = [r for r in mine if r["ok"]]
        per_model[name] = {
            "requests": len(mine),
            "failed": len(mine) - len(ok),
            "served_by": sorted({r["model"] for r in ok}),
            "audio_s": sum(r["audio_s"] for r in ok),
            "rtf": sum(r["audio_s"] for r in ok) / wall,
            "latency_max_s": max((r["wall_s"] for r in ok), default=None),
            "ttfb_max_ms": max((1000 * r["ttfb_s"] for r in ok if r["ttfb_s"] is not None), default=None),
        }
    return {"wall_s": wall, "rtf_aggregate": sum(m["audio_s"] for m in per_model.values()) / wall,
            "models": per_model}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(
        model=args.models[0], extra_models=args.models[1:], preset=args.preset, vram_budget_gib=args.vram_budget_gib,
        max_new_tokens=args.tokens, max_queue=4 * args.concurrency + 8,
    )  # fmt: skip
    cuda = torch.cuda.is_available() and settings.device != "cpu"
    memory = PeakDeviceMemory() if cuda else contextlib.nullcontext()
    started = time.perf_counter()
    with memory, HTTPServer(None, settings) as server:  # no model given: the app loads them, as `serve` does
        health = wait_loaded(server.url)
        load_s = time.perf_counter() - started
        if health["status"] != "ok":
            raise RuntimeError(f"not every model loaded: {json.dumps(health['models'])}")
        served = [m["id"] for m in health["models"]]
        for model in served:  # unmeasured: first requests capture graphs and fill caches
            asyncio.run(together(server.url, [model] * args.concurrency))
        alone = {model: asyncio.run(together(server.url, [model] * args.concurrency)) for model in served}
        mixed_models = [served[i % len(served)] for i in range(args.concurrency * len(served))]
        mixed = asyncio.run(together(server.url, mixed_models))
        final_health = httpx.get(f"{server.url}/health", timeout=10).json()
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "device": device_name(),
        "command": command_line(),
        "preset": args.preset,
        "vram_budget_gib": args.vram_budget_gib,
        "tokens_per_request": args.tokens,
        "concurrency_per_model": args.concurrency,
        "load_s": load_s,
        "models": final_health["models"],
        "alone": alone,
        "mixed": mixed,
    }
    if cuda:
        report["device_memory"] = {
            "before_gib": memory.baseline / 2**30,
            "peak_gib": memory.peak / 2**30,
            "peak_above_start_gib": (memory.peak - memory.baseline) / 2**30,
            "health_vram": final_health.get("vram"),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="CHATTERBOX_MODEL, then the extra models")
    parser.add_argument("--preset", default="high")
    parser.add_argument("--vram-budget-gib", type=float, help="CHATTERBOX_VRAM_BUDGET_GIB (unset: the free memory)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests per model at once")
    parser.add_argument("--tokens", type=int, default=SENTENCE_TOKENS, help="speech tokens per request")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    report = run(args)
    Path(args.out).write_text(json.dumps(report, indent=2))
    mixed = report["mixed"]
    print(f"loaded in {report['load_s']:.1f} s: " + ", ".join(
        f"{m['id']} (T3 {m.get('t3_gpu_memory_gib', 'preset')} GiB)" for m in report["models"]))  # fmt: skip
    for model, level in report["alone"].items():
        print(f"alone {model}: {level['models'][model]['rtf']:.1f}x real time, {level['models'][model]['failed']} failed")
    print(f"together: {mixed['rtf_aggregate']:.1f}x real time; " + ", ".join(
        f"{name} {m['rtf']:.1f}x ({m['failed']} failed)" for name, m in mixed["models"].items()))  # fmt: skip
    if "device_memory" in report:
        print(f"device memory peak {report['device_memory']['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
