"""The first request with a newly uploaded voice against the built-in voice, through the real app over HTTP.

A clone is analysed when it is uploaded (voice encoder, S3 tokenizer, CAMPPlus, mel; stored in the voices
directory), so its first request should cost what a built-in voice request costs. Each round, in this order:
* builtin: one sentence with the built-in voice;
* upload: POST /v1/audio/voices of a clip no earlier round used (its answer waits for the analysis);
* clone_first, clone_again: the sentence with that voice, twice;
* dropped_in_first: the sentence with a clip copied into the voices directory by hand, which nothing analysed
  before its first request (what every clone's first request cost before uploads analysed them).
Every request is pcm with the same seed and speech tokens (random weights rarely sample the stop token, so each is
capped at `--tokens`); one unmeasured request warms the server first. The clips last 6.25 s by default: the
prompt S3Gen and T3 then get is as long as the built-in voice's (156 and 150 tokens), so the voices cost the same
to speak with and what differs is the analysis alone (a 10 s clip makes S3Gen's prompt 250 tokens: every request
with it is slower, the first as much as the others).

    python -m benchmarks.voice_clone --model random-tiny --device cpu --out clone.json      # the BENCHMARKS figures
    python -m benchmarks.voice_clone --model random-tiny --device cpu --rounds 1 --tokens 10 --out clone.json  # CI
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile
from benchmarks.e2e import HTTPServer
from benchmarks.host import command_line, device_name
from benchmarks.texts import SENTENCE, SENTENCE_TOKENS

from chatterbox_vllm.process_setup import configure_process
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import SAMPLE_RATE, ChatterboxTTS

KINDS = ("builtin", "clone_first", "clone_again", "dropped_in_first")


def voice_clip(seed: int, seconds: float) -> bytes:
    """A WAV clip no other round uses (a chirp with a little noise, distinct per seed)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.4 * np.sin(2 * np.pi * ((110 + 9 * seed) * t + 40 * t**2))
    wave += 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave.astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def speak(client: httpx.Client, url: str, voice: str) -> dict[str, float]:
    """One sentence as pcm: seconds to the first audio byte and to the end, audio seconds."""
    start = time.perf_counter()
    first = None
    size = 0
    body = {"model": "tts-1", "input": SENTENCE, "voice": voice, "seed": 0, "response_format": "pcm"}
    with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{voice}: {response.status_code} {response.read()[:300]!r}")
        for chunk in response.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - start
            size += len(chunk)
    return {"ttfb_s": first or 0.0, "wall_s": time.perf_counter() - start, "audio_s": size / 2 / SAMPLE_RATE}


def one_round(client: httpx.Client, url: str, voices_dir: Path, index: int, clip_seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {"builtin": speak(client, url, "default")}
    start = time.perf_counter()
    created = client.post(f"{url}/v1/audio/voices", data={"name": f"bench {index}", "consent": "yes"},
                          files={"audio_sample": ("clip.wav", voice_clip(2 * index, clip_seconds), "audio/wav")})  # fmt: skip
    if created.status_code != 201:
        raise RuntimeError(f"upload: {created.status_code} {created.text[:300]}")
    result["upload_s"] = time.perf_counter() - start
    result["clone_first"] = speak(client, url, created.json()["id"])
    result["clone_again"] = speak(client, url, created.json()["id"])
    (voices_dir / f"dropped-{index}.wav").write_bytes(voice_clip(2 * index + 1, clip_seconds))
    result["dropped_in_first"] = speak(client, url, f"dropped-{index}")
    return result


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Round 0 on its own (the first clone since the server started: one-off costs land there) and the median of
    every round, in ms: each kind's first byte and whole request, and the first clone request's extra time."""

    def figures(of: list[dict[str, Any]]) -> dict[str, float]:
        out = {"upload_ms": 1000 * statistics.median(r["upload_s"] for r in of)}
        for kind in KINDS:
            out[f"{kind}_ttfb_ms"] = 1000 * statistics.median(r[kind]["ttfb_s"] for r in of)
            out[f"{kind}_wall_ms"] = 1000 * statistics.median(r[kind]["wall_s"] for r in of)
        for kind, than in (("clone_first", "builtin"), ("clone_first", "clone_again"), ("dropped_in_first", "builtin")):
            for what in ("ttfb", "wall"):
                out[f"{kind}_minus_{than}_{what}_ms"] = 1000 * statistics.median(
                    r[kind][f"{what}_s"] - r[than][f"{what}_s"] for r in of
                )
        return out

    return {"first_round": figures(rounds[:1]), "median": figures(rounds)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="voice-clone-bench-") as tmp:
        voices_dir = Path(tmp) / "voices"
        settings = Settings(model=args.model, device=args.device, preset=args.preset, max_new_tokens=args.tokens,
                            voices_dir=str(voices_dir))  # fmt: skip
        configure_process(settings)  # as the server does at start: compile caches, TF32
        tts = ChatterboxTTS.from_settings(settings)
        try:
            with HTTPServer(tts, settings) as server, httpx.Client(timeout=600) as client:
                speak(client, server.url, "default")  # unmeasured: the first request warms the server
                rounds = [one_round(client, server.url, voices_dir, i, args.clip_seconds) for i in range(args.rounds)]
        finally:
            tts.close()
    return {
        "date": dt.date.today().isoformat(),
        "device": device_name(),
        "command": command_line(),
        "model": args.model,
        "variant": tts.variant,
        "engine": type(tts.engine).__name__,
        "tokens_per_request": args.tokens,
        "clip_seconds": args.clip_seconds,
        "summary": summarise(rounds),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=SENTENCE_TOKENS, help="speech tokens per request")
    parser.add_argument("--clip-seconds", type=float, default=6.25, help="length of each uploaded clip")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    report = run(args)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{report['device']}, {report['variant']} ({report['model']}, {report['engine']}), {args.rounds} rounds:")
    for label, s in (("first clone since start", report["summary"]["first_round"]),
                     ("median of every round", report["summary"]["median"])):  # fmt: skip
        print(f"  {label}: upload (analysis included) {s['upload_ms']:.0f} ms")
        for kind in KINDS:
            print(f"    {kind:17s} first byte {s[f'{kind}_ttfb_ms']:6.0f} ms, whole {s[f'{kind}_wall_ms']:6.0f} ms")
        print(f"    first request with a new clone minus the built-in voice's: first byte "
              f"{s['clone_first_minus_builtin_ttfb_ms']:+.0f} ms, whole {s['clone_first_minus_builtin_wall_ms']:+.0f} ms "
              f"(a clip analysed on its first request: {s['dropped_in_first_minus_builtin_ttfb_ms']:+.0f} ms, "
              f"{s['dropped_in_first_minus_builtin_wall_ms']:+.0f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
