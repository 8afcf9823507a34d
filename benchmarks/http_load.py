"""Streaming HTTP clients of the speech API, shared by the benchmarks (e2e.py's in-process server, headline.py's
server subprocess, timeline.py's client process): one request timed to its first audio byte, a burst of concurrent
ones, and the percentiles of their figures. Only httpx and asyncio here, so a client process stays light."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from benchmarks.texts import SENTENCE

SAMPLE_RATE = 24000  # pcm from the server: 16-bit mono at Chatterbox's rate


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted `values` (nearest rank below; None for none)."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


async def one_request(
    client: httpx.AsyncClient, url: str, fmt: str, text: str = SENTENCE, model: str = "tts-1"
) -> dict[str, Any]:
    """One streamed speech request: its first audio byte's time, its whole time and the audio it carried."""
    start = time.perf_counter()
    first = None
    size = 0
    try:
        async with client.stream("POST", f"{url}/v1/audio/speech", json={
            "model": model, "input": text, "voice": "alloy", "response_format": fmt}) as response:  # fmt: skip
            if response.status_code != 200:
                await response.aread()
                return {"ok": False, "status": response.status_code, "error": response.text[:200]}
            async for chunk in response.aiter_bytes():
                if chunk and first is None:
                    first = time.perf_counter() - start
                size += len(chunk)
    except httpx.HTTPError as exc:
        return {"ok": False, "status": None, "error": f"{type(exc).__name__}: {exc}"}
    wall = time.perf_counter() - start
    audio = size / 2 / SAMPLE_RATE if fmt == "pcm" else None
    return {"ok": True, "ttfb_s": first, "wall_s": wall, "audio_s": audio, "bytes": size}


async def burst_requests(
    url: str, concurrency: int, fmt: str = "pcm", text: str = SENTENCE, model: str = "tts-1"
) -> tuple[list[dict[str, Any]], float]:
    """`concurrency` requests sent at once: each one's result and the burst's wall time."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, url, fmt, text, model) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return list(results), wall


def summarize(results: list[dict[str, Any]], wall: float, concurrency: int) -> dict[str, Any]:
    """A burst's aggregate speed (audio seconds per wall second), failures, latency and first-byte percentiles."""
    ok = [r for r in results if r["ok"]]
    audio = sum(r["audio_s"] or 0.0 for r in ok)
    latencies = sorted(r["wall_s"] for r in ok)
    ttfbs = sorted(r["ttfb_s"] for r in ok if r["ttfb_s"] is not None)
    return {
        "concurrency": concurrency,
        "failed": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if not r["ok"]})[:5],
        "wall_s": wall,
        "audio_s": audio,
        "rtf_aggregate": audio / wall if wall else 0.0,
        "latency_p50_s": pct(latencies, 0.5),
        "latency_p95_s": pct(latencies, 0.95),
        "ttfb_p50_ms": None if not ttfbs else 1000 * pct(ttfbs, 0.5),
        "ttfb_p95_ms": None if not ttfbs else 1000 * pct(ttfbs, 0.95),
    }


async def burst(
    url: str, concurrency: int, fmt: str = "pcm", text: str = SENTENCE, model: str = "tts-1"
) -> dict[str, Any]:
    """`concurrency` requests at once, summarized."""
    results, wall = await burst_requests(url, concurrency, fmt, text, model)
    return summarize(results, wall, concurrency)
