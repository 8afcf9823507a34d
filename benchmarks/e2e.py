"""End-to-end speed and memory of the speech pipeline and its HTTP server, on the GPU (full size) or a CPU (tiny).

`run` loads one model with a preset and measures, in this order:
* t3: tokens/s of one stream (bandwidth bound: the bytes of T3's decode weights / the GPU's memory bandwidth);
* paragraph: one ~20 s paragraph through the server's synthesis path (pieces, T3 in vLLM, S3Gen), audio seconds
  per wall second (RTF), time to first audio, and the per-stage split (T3, S3Gen flow, HiFT vocoder, mp3 encoding);
* first_audio: where a lone streamed sentence's time to first audio goes (prompt, T3's first and Nth token, the
  partial vocode's queueing and run), without HTTP;
* ttfb: time to the first audio byte of one streamed sentence over HTTP (uvicorn on loopback, pcm and mp3);
* sweep: 1/4/16/64 concurrent sentence requests over HTTP: aggregate RTF, latency, failures, and per level where
  the time went (S3Gen's busy fraction and batches, T3's inter-token time, prompt embeddings on the event loop);
* vram (GPU): each preset in a child process of its own (`vram` subcommand) with torch capped to a budget:
  the peak device memory the whole process used.
Random weights rarely sample T3's stop token, so each request is capped at the token count the real model would
write for the text (benchmarks/texts.py). Writes a JSON report and PNG plots.

    python -m benchmarks.e2e run --model /ckpt/english --preset high --out run.json
    python -m benchmarks.e2e vram --models multilingual=/ckpt/multilingual english=/ckpt/english --out vram.json
    python tools/reference/bench_reference.py --ckpt /ckpt/english --out reference.json   # the oracle's env
    python -m benchmarks.e2e report --run run.json --vram vram.json --reference reference.json \
        --out benchmarks/results/<device>-<date>.json --plots benchmarks/results/plots
    python -m benchmarks.e2e run --model random-tiny --quick --sweep 1 4 --out run.json   # CPU smoke (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmarks.host import PeakPoller, command_line, device_name, free_port, gpu_used_mib
from benchmarks.http_load import burst
from benchmarks.texts import PARAGRAPH, PARAGRAPH_TOKENS, SENTENCE, SENTENCE_TOKENS

from chatterbox_vllm.engine.base import SamplingParams, speech_tokens_for_s3gen
from chatterbox_vllm.process_setup import configure_process
from chatterbox_vllm.server.audio import AudioEncoder
from chatterbox_vllm.server.schemas import SpeechRequest
from chatterbox_vllm.server.synthesis import Synthesizer
from chatterbox_vllm.server.voices import Voice
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.text.chunking import split_for_synthesis
from chatterbox_vllm.tts import SAMPLE_RATE, ChatterboxTTS

BUILTIN = Voice(id="default", name="default", kind="builtin")
# Peak memory bandwidth (GB/s) by device name: the ceiling for one decode stream.
HBM_GBPS = {"H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H200": 4800.0, "A100-SXM4-80GB": 2039.0}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tokens_per_piece(text: str, total_tokens: int, chunk_chars: int) -> int:
    """A per-piece cap giving `total_tokens` over the text's pieces (they are of similar length)."""
    return max(1, math.ceil(total_tokens / len(split_for_synthesis(text, chunk_chars))))


# -------------------------------------------------------------------------------------------------- T3 alone
def decode_weight_bytes(tts: ChatterboxTTS, model: str, dtype_bytes: int) -> int:
    """Bytes one decode step must read: every backbone layer, the final norm and the speech head (the embeddings
    read one row). Both CFG branches share them (see engine/vllm_t3/model.py). Llama T3s name their blocks
    `tfmr.layers.*` and `tfmr.norm.*`, Turbo's GPT-2 T3 `tfmr.h.*` and `tfmr.ln_f.*`."""
    from safetensors import safe_open

    from chatterbox_vllm.checkpoint.hub import resolve_model

    directory, layout = resolve_model(model)
    with safe_open(str(directory / layout.t3), "pt") as f:
        count = 0
        for key in f.keys():
            if key.startswith(("tfmr.layers.", "tfmr.norm.", "tfmr.h.", "tfmr.ln_f.", "speech_head.")):
                count += math.prod(f.get_slice(key).get_shape())
    return count * dtype_bytes


def bench_t3(tts: ChatterboxTTS, tokens: int, settings: Settings) -> dict[str, Any]:
    conds = tts.default_conds
    text = tts.text_tokens(SENTENCE).to(tts.device)
    params = SamplingParams(max_new_tokens=tokens, seed=0)
    tts.engine.generate(text, conds.t3, SamplingParams(max_new_tokens=8, seed=0))  # warm
    sync()
    start = time.perf_counter()
    out = tts.engine.generate(text, conds.t3, params)
    sync()
    seconds = time.perf_counter() - start
    limits = settings.limits()
    dtype_bytes = 4 if tts.device.type == "cpu" or limits.dtype == "float32" else 2
    report: dict[str, Any] = {"tokens": len(out), "seconds": seconds, "tok_per_s": len(out) / seconds}
    gbps = next((v for k, v in HBM_GBPS.items() if k in device_name()), None)
    if gbps:
        weight_bytes = decode_weight_bytes(tts, settings.model, dtype_bytes)
        report.update(
            decode_weight_gib=weight_bytes / 2**30,
            hbm_gbps=gbps,
            bandwidth_bound_tok_per_s=gbps * 1e9 / weight_bytes,
        )
        report["fraction_of_bound"] = report["tok_per_s"] / report["bandwidth_bound_tok_per_s"]
    return report


# -------------------------------------------------------------------------------------------------- pipeline
async def speak(synthesizer: Synthesizer, text: str) -> dict[str, float]:
    """One request through the server's synthesis path (no HTTP): wall time, first audio, audio seconds."""
    request = SpeechRequest(model="tts-1", input=text, voice="alloy", response_format="pcm")
    start = time.perf_counter()
    prepared = await synthesizer.prepare(request, BUILTIN)
    first = None
    samples = 0
    async for wav in synthesizer.stream(prepared, {}):
        if first is None and len(wav):
            first = time.perf_counter() - start
        samples += len(wav)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "first_audio_s": first or wall, "audio_s": samples / SAMPLE_RATE}


def bench_paragraph(tts: ChatterboxTTS, settings: Settings, repeats: int) -> dict[str, Any]:
    per_piece = tokens_per_piece(PARAGRAPH, PARAGRAPH_TOKENS, settings.chunk_chars)
    synthesizer = Synthesizer(tts, settings.model_copy(update={"max_new_tokens": per_piece}))
    try:
        # warm: a server in service has captured the S3Gen graphs of the paragraph's batch shapes already
        asyncio.run(speak(synthesizer, SENTENCE))
        asyncio.run(speak(synthesizer, PARAGRAPH))
        runs = [asyncio.run(speak(synthesizer, PARAGRAPH)) for _ in range(repeats)]
    finally:
        synthesizer.close()
    best = min(runs, key=lambda r: r["wall_s"])
    median_wall = statistics.median(r["wall_s"] for r in runs)
    audio = statistics.median(r["audio_s"] for r in runs)
    return {
        "chunk_chars": settings.chunk_chars,
        "pieces": len(split_for_synthesis(PARAGRAPH, settings.chunk_chars)),
        "tokens_per_piece": per_piece,
        "runs": runs,
        "audio_s": audio,
        "wall_s_median": median_wall,
        "rtf": audio / median_wall,
        "rtf_best": best["audio_s"] / best["wall_s"],
        "first_audio_s_median": statistics.median(r["first_audio_s"] for r in runs),
    }


class PromptEmbedsTimer:
    """Times T3's prompt embeddings, which each new T3 request builds on the server's event loop (a GPU copy to
    the host): a long one there stalls every stream the server is writing."""

    def __init__(self, tts: ChatterboxTTS) -> None:
        self.engine = tts.engine
        self.seconds: list[float] = []

    def __enter__(self) -> "PromptEmbedsTimer":
        original = self.engine.prompt_embeds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - start)

        self.engine.prompt_embeds = timed
        return self

    def __exit__(self, *exc: object) -> None:
        del self.engine.prompt_embeds  # the class's method again

    def summary(self) -> dict[str, Any]:
        values = sorted(self.seconds)
        return {
            "prompt_embeds_count": len(values),
            "prompt_embeds_median_ms": 1000 * statistics.median(values) if values else None,
            "prompt_embeds_max_ms": 1000 * values[-1] if values else None,
        }


async def traced_first_audio(synthesizer: Synthesizer, tts: ChatterboxTTS, text: str) -> dict[str, float]:
    """One streamed sentence with the time (ms from the request) of each step on the way to its first audio."""
    marks: dict[str, float] = {}
    start = time.perf_counter()

    def mark(name: str) -> None:
        marks.setdefault(name, 1000 * (time.perf_counter() - start))

    engine, worker = tts.engine, synthesizer._s3gen
    stream_async, submit_partial, run_partials = engine.stream_async, worker.partial, worker.vocode_partials
    wanted = synthesizer.settings.stream_first_audio_tokens

    async def traced_stream(*args: Any, **kwargs: Any) -> Any:
        count = 0
        async for token in stream_async(*args, **kwargs):
            count += 1
            mark("t3_first_token")
            if count == wanted:
                mark(f"t3_token_{wanted}")
            yield token

    def traced_partial(job: Any) -> Any:
        mark("s3gen_partial_queued")
        future = submit_partial(job)
        future.add_done_callback(lambda _: mark("s3gen_partial_done"))
        return future

    def traced_run(*args: Any) -> Any:  # on the S3Gen thread: the batch holding the first partial
        mark("s3gen_partial_started")
        try:
            return run_partials(*args)
        finally:
            mark("s3gen_partial_ran")

    engine.stream_async, worker.partial, worker.vocode_partials = traced_stream, traced_partial, traced_run
    try:
        request = SpeechRequest(model="tts-1", input=text, voice="alloy", response_format="pcm")
        with PromptEmbedsTimer(tts) as embeds:
            prepared = await synthesizer.prepare(request, BUILTIN)
            mark("prepared")
            async with contextlib.aclosing(synthesizer.stream(prepared, {})) as audio:  # closed: T3 stops at once
                async for wav in audio:
                    if len(wav):
                        mark("first_audio")
                        break
        marks["prompt_embeds"] = 1000 * sum(embeds.seconds)
    finally:
        del engine.stream_async, worker.partial
        worker.vocode_partials = run_partials
    return marks


def bench_first_audio(tts: ChatterboxTTS, settings: Settings, repeats: int) -> dict[str, Any]:
    """Where a lone streamed sentence's time to first audio goes, without HTTP: median ms of each mark over runs
    (the HTTP first byte minus `first_audio` is the server's own share)."""
    if not hasattr(tts.engine, "stream_async"):
        return {}
    synthesizer = Synthesizer(tts, settings.model_copy(update={"max_new_tokens": SENTENCE_TOKENS}))
    try:
        asyncio.run(traced_first_audio(synthesizer, tts, SENTENCE))  # warm
        runs = [asyncio.run(traced_first_audio(synthesizer, tts, SENTENCE)) for _ in range(repeats)]
    finally:
        synthesizer.close()
    names = sorted({name for run in runs for name in run}, key=lambda n: statistics.median(r.get(n, 0) for r in runs))
    return {"median_ms": {name: statistics.median(r[name] for r in runs if name in r) for name in names}, "runs": runs}


def bench_stages(tts: ChatterboxTTS, settings: Settings) -> dict[str, float]:
    """The paragraph once more, stage by stage and one piece after another: where the time goes."""
    per_piece = tokens_per_piece(PARAGRAPH, PARAGRAPH_TOKENS, settings.chunk_chars)
    conds = tts.default_conds
    totals = {"t3_s": 0.0, "s3gen_flow_s": 0.0, "hift_s": 0.0, "mp3_encode_s": 0.0, "audio_s": 0.0}
    encoder = AudioEncoder("mp3", SAMPLE_RATE)
    for index, piece in enumerate(split_for_synthesis(PARAGRAPH, settings.chunk_chars)):
        text = tts.text_tokens(piece).to(tts.device)
        sync()
        t0 = time.perf_counter()
        tokens = tts.engine.generate(text, conds.t3, SamplingParams(max_new_tokens=per_piece, seed=index))
        sync()
        t1 = time.perf_counter()
        valid = torch.tensor(speech_tokens_for_s3gen(tokens), device=tts.device).unsqueeze(0)
        with torch.inference_mode():
            mel = tts.s3gen.flow_inference(valid, conds.gen)
            sync()
            t2 = time.perf_counter()
            wav = tts.s3gen.hift_inference(mel).squeeze(0).float().cpu().numpy()
        sync()
        t3 = time.perf_counter()
        encoder.encode(wav)
        t4 = time.perf_counter()
        totals["t3_s"] += t1 - t0
        totals["s3gen_flow_s"] += t2 - t1
        totals["hift_s"] += t3 - t2
        totals["mp3_encode_s"] += t4 - t3
        totals["audio_s"] += len(wav) / SAMPLE_RATE
    encoder.finish()
    encoder.close()
    return totals


# -------------------------------------------------------------------------------------------------- HTTP
class HTTPServer:
    """The real app under uvicorn on loopback, sharing the loaded model."""

    def __init__(self, tts: ChatterboxTTS, settings: Settings) -> None:
        import uvicorn

        from chatterbox_vllm.server.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, tts=tts)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "HTTPServer":
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("benchmark server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


# Histogram totals of the server (same process) whose change over a sweep level says where its wall time went:
# S3Gen's thread work, its batches, and T3's inter-token time (vLLM renamed that metric; either name counts).
SERVER_TOTALS = {
    "s3gen_work_s": ("chatterbox_s3gen_work_seconds_sum",),
    "s3gen_work_items": ("chatterbox_s3gen_work_seconds_count",),
    "s3gen_batches": ("chatterbox_s3gen_batch_size_count",),
    "s3gen_rows": ("chatterbox_s3gen_batch_size_sum",),
    "t3_inter_token_s": ("vllm:time_per_output_token_seconds_sum", "vllm:inter_token_latency_seconds_sum"),
    "t3_inter_tokens": ("vllm:time_per_output_token_seconds_count", "vllm:inter_token_latency_seconds_count"),
}


def server_totals() -> dict[str, float]:
    """The current SERVER_TOTALS, summed over label sets."""
    from prometheus_client import REGISTRY

    by_sample: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            by_sample[sample.name] = by_sample.get(sample.name, 0.0) + float(sample.value)
    return {key: sum(by_sample.get(name, 0.0) for name in names) for key, names in SERVER_TOTALS.items()}


def where_time_went(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, Any]:
    """One sweep level's S3Gen busy fraction (near 1: S3Gen bounds it), its mean batch and T3's inter-token time."""
    d = {key: after[key] - before[key] for key in after}
    return {
        "s3gen_busy_s": d["s3gen_work_s"],
        "s3gen_busy_fraction": d["s3gen_work_s"] / wall_s if wall_s else None,
        "s3gen_work_items": int(d["s3gen_work_items"]),
        "s3gen_batches": int(d["s3gen_batches"]),
        "s3gen_mean_batch_rows": d["s3gen_rows"] / d["s3gen_batches"] if d["s3gen_batches"] else None,
        "t3_mean_inter_token_ms": 1000 * d["t3_inter_token_s"] / d["t3_inter_tokens"] if d["t3_inter_tokens"] else None,
    }


def bench_http(tts: ChatterboxTTS, settings: Settings, sweep: list[int], ttfb_repeats: int) -> dict[str, Any]:
    http_settings = settings.model_copy(update={
        "max_new_tokens": SENTENCE_TOKENS, "max_queue": max(sweep) + 8,
        "gil_switch_interval_ms": 1000 * sys.getswitchinterval(),  # the app sets it at start: keep the run's
    })  # fmt: skip
    with HTTPServer(tts, http_settings) as server:
        asyncio.run(burst(server.url, 1))  # warm
        ttfb: dict[str, Any] = {}
        for fmt in ("pcm", "mp3"):
            values = [asyncio.run(burst(server.url, 1, fmt))["ttfb_p50_ms"] for _ in range(ttfb_repeats)]
            ttfb[fmt] = {"median_ms": statistics.median(values), "all_ms": values}
        for c in sweep:  # unmeasured: S3Gen captures a CUDA graph the first time each batch shape appears
            asyncio.run(burst(server.url, c))
        results = []
        for c in sweep:
            before = server_totals()
            with PromptEmbedsTimer(tts) as embeds:
                level = asyncio.run(burst(server.url, c))
            level["server"] = {**where_time_went(before, server_totals(), level["wall_s"]), **embeds.summary()}
            results.append(level)
    return {"ttfb": ttfb, "sweep": results, "sentence_tokens": SENTENCE_TOKENS}


# -------------------------------------------------------------------------------------------------- memory
class PeakDeviceMemory(PeakPoller):
    """The device's used memory (all of this process: torch, vLLM, CUDA context), polled in a thread."""

    interval_s = 0.005

    def __init__(self) -> None:
        super().__init__()
        self.baseline = self.peak = self.used()

    def used(self) -> float:
        free, total = torch.cuda.mem_get_info()
        return total - free


def voice_clip(seconds: float = 10.0) -> bytes:
    """A voiced-sounding 24 kHz WAV (a gliding tone with harmonics and a syllable-rate envelope)."""
    import soundfile as sf

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.4 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    buffer = io.BytesIO()
    sf.write(buffer, (0.2 * wav).astype(np.float32), SAMPLE_RATE, format="WAV")
    return buffer.getvalue()


def vram_child(args: argparse.Namespace) -> dict[str, Any]:
    """One preset in this process: load, then a paragraph and a full batch of sentences, at peak memory."""
    before = gpu_used_mib()
    torch.cuda.init()
    total = torch.cuda.mem_get_info()[1]
    if args.cap_gib:
        # torch's allocator (S3Gen, the voice encoder and vLLM's own tensors) may not pass the cap.
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total))
    report: dict[str, Any] = {"preset": args.preset, "model": args.model, "cap_gib": args.cap_gib}
    try:
        with PeakDeviceMemory() as peak:
            settings = Settings(model=args.model, preset=args.preset, device="cuda")
            configure_process(settings)
            tts = ChatterboxTTS.from_settings(settings)
            paragraph = bench_paragraph(tts, settings, repeats=1)
            synthesizer = Synthesizer(tts, settings.model_copy(update={"max_new_tokens": SENTENCE_TOKENS}))

            async def full_batch() -> None:
                await asyncio.gather(*(speak(synthesizer, SENTENCE) for _ in range(settings.limits().max_batch_size)))

            asyncio.run(full_batch())
            synthesizer.close()
            start = time.perf_counter()
            tts.prepare_conditionals(voice_clip())  # a new voice: the speech tokenizer runs where the preset puts it
            voice_analysis_s = time.perf_counter() - start
        report.update(
            voice_analysis_s=voice_analysis_s,
            s3_tokenizer_device=str(tts.s3gen.tokenizer.device),
            ok=True,
            limits=settings.limits().__dict__,
            peak_process_gib=(peak.peak - peak.baseline) / 2**30,
            device_used_before_mib=before,
            torch_max_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
            paragraph_rtf=paragraph["rtf"],
        )
        tts.close()
    except Exception as exc:  # a preset that does not fit is a result, not a crash of the sweep
        report.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
    return report


def bench_vram(models: dict[str, str], presets: list[str], cap_gib: dict[str, float]) -> list[dict[str, Any]]:
    results = []
    for variant, model in models.items():
        for preset in presets:
            cmd = [sys.executable, "-m", "benchmarks.e2e", "vram-one", "--model", model, "--preset", preset]
            if preset in cap_gib:
                cmd += ["--cap-gib", str(cap_gib[preset])]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            result = json.loads(lines[-1]) if lines else {"ok": False, "error": done.stderr[-2000:]}
            result["variant"] = variant
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


# -------------------------------------------------------------------------------------------------- plots
def plot(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    sweep = report["http"]["sweep"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    xs = [s["concurrency"] for s in sweep]
    ax[0].plot(xs, [s["rtf_aggregate"] for s in sweep], marker="o")
    ax[0].set(xscale="log", xlabel="concurrent requests", ylabel="audio s / wall s", title="Aggregate speed")
    ax[1].plot(xs, [s["latency_p50_s"] for s in sweep], marker="o", label="latency p50")
    ax[1].plot(xs, [(s["ttfb_p50_ms"] or 0) / 1000 for s in sweep], marker="o", label="first byte p50")
    ax[1].set(xscale="log", xlabel="concurrent requests", ylabel="seconds", title="Per request")
    ax[1].legend()
    fig.suptitle(f"{report['device']} · {report['model_label']}")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    written.append(str(out / "sweep.png"))
    plt.close(fig)

    stages = report["stages"]
    names = ["t3_s", "s3gen_flow_s", "hift_s", "mp3_encode_s"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([n.removesuffix("_s") for n in names], [stages[n] / stages["audio_s"] for n in names])
    ax.set(ylabel="seconds per audio second", title="Where the time goes (paragraph, sequential)")
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=110)
    written.append(str(out / "stages.png"))
    plt.close(fig)

    if report.get("vram"):
        ok = [v for v in report["vram"] if v.get("ok")]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([f"{v['variant']}\n{v['preset']}" for v in ok], [v["peak_process_gib"] for v in ok])
        ax.set(ylabel="GiB", title="Peak GPU memory of the whole process")
        fig.tight_layout()
        fig.savefig(out / "vram.png", dpi=110)
        written.append(str(out / "vram.png"))
        plt.close(fig)
    return written


# -------------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {"model": args.model, "preset": args.preset, "device": args.device}
    if args.max_batch_size:
        overrides["max_batch_size"] = args.max_batch_size
    if args.chunk_chars:
        overrides["chunk_chars"] = args.chunk_chars
    if "CHATTERBOX_S3GEN_LAYOUT" not in os.environ:
        # the first-audio marks time S3Gen on the server's thread (headline.py measures the default layout)
        overrides["s3gen_layout"] = "thread"
    settings = Settings(**overrides)
    # The server's GIL switch interval (it sets it at start) for every part, unless the command sets its own
    sys.setswitchinterval(args.switch_interval[0] if args.switch_interval else settings.gil_switch_interval_ms / 1000)
    configure_process(settings)  # as the server does at start: compile caches, TF32
    start = time.perf_counter()
    tts = ChatterboxTTS.from_settings(settings)
    load_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "device": device_name(),
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "model_label": f"{tts.variant} {'tiny' if args.quick else 'full'} ({args.model})",
        "engine": type(tts.engine).__name__,
        "limits": settings.limits().__dict__,
        "s3gen": {"batch_size": settings.s3gen_batch_size, "dtype": settings.s3gen_dtype, "tf32": settings.tf32,
                  "compile": settings.s3gen_compile},
        # As set; AsyncLLM (the server's engine) runs its engine core in a process of its own either way: the
        # variable only keeps `vllm.LLM` in-process
        "vllm_multiprocessing": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"),
        "versions": versions(),
        "load_s": load_s,
        "switch_interval_s": sys.getswitchinterval(),
    }
    try:
        report["t3"] = bench_t3(tts, 64 if args.quick else 400, settings)
        print("t3", json.dumps(report["t3"]), flush=True)
        if args.only_http:
            for interval in args.switch_interval or [sys.getswitchinterval()]:
                sys.setswitchinterval(interval)
                key = f"http_switch_{interval:g}"
                report[key] = bench_http(tts, settings, args.sweep, ttfb_repeats=2 if args.quick else 9)
                print(key, json.dumps(report[key]), flush=True)
            return report
        report["paragraph"] = bench_paragraph(tts, settings, repeats=1 if args.quick else 3)
        for chars in args.extra_chunk_chars:
            report[f"paragraph_chunk_{chars}"] = bench_paragraph(
                tts, settings.model_copy(update={"chunk_chars": chars}), repeats=1 if args.quick else 3
            )
        print("paragraph", json.dumps(report["paragraph"]), flush=True)
        report["first_audio"] = bench_first_audio(tts, settings, repeats=2 if args.quick else 7)
        print("first_audio", json.dumps(report["first_audio"].get("median_ms")), flush=True)
        report["stages"] = bench_stages(tts, settings)
        print("stages", json.dumps(report["stages"]), flush=True)
        report["http"] = bench_http(tts, settings, args.sweep, ttfb_repeats=2 if args.quick else 5)
        print("http", json.dumps(report["http"]), flush=True)
    finally:
        tts.close()
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's headline keys (numbers; None where this run did not measure them)."""
    sweep = {s["concurrency"]: s for s in report["http"]["sweep"]}
    low_mtl = [v for v in report.get("vram", []) if v.get("variant") == "multilingual" and v.get("preset") == "low"]
    return {
        "rtf_single_paragraph": report["paragraph"]["rtf"],
        "ref_rtf_single_paragraph": report.get("reference", {}).get("rtf"),
        "speedup_vs_reference": (
            report["paragraph"]["rtf"] / report["reference"]["rtf"] if report.get("reference") else None
        ),
        "ttfb_ms_sentence": report["http"]["ttfb"]["pcm"]["median_ms"],
        "rtf_aggregate_64": sweep.get(64, {}).get("rtf_aggregate"),
        "failed_requests_64": sweep.get(64, {}).get("failed"),
        "peak_vram_gib_low_multilingual": low_mtl[0].get("peak_process_gib") if low_mtl else None,
        "t3_tok_per_s_1_stream": report["t3"]["tok_per_s"],
        "device": report["device"],
        "date": report["date"],
        "command": report["command"],
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import vllm

        out["vllm"] = vllm.__version__
    except ImportError:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="speed: T3, paragraph, stages, HTTP first byte and concurrency sweep")
    r.add_argument("--model", required=True)
    r.add_argument("--preset", default="high")
    r.add_argument("--device", default="auto")
    r.add_argument("--max-batch-size", type=int)
    r.add_argument("--chunk-chars", type=int)
    r.add_argument("--extra-chunk-chars", type=int, nargs="*", default=[])
    r.add_argument("--sweep", type=int, nargs="+", default=[1, 4, 16, 64])
    r.add_argument("--quick", action="store_true", help="CPU smoke: short decodes, fewer repeats")
    r.add_argument("--only-http", action="store_true", help="T3 and the HTTP part only (no paragraph, no stages)")
    r.add_argument("--switch-interval", type=float, nargs="*", default=[],
                   help="sys.setswitchinterval (s), how long a thread keeps the GIL; with --only-http one HTTP "
                        "run per value")  # fmt: skip
    r.add_argument("--out", required=True)
    v = sub.add_parser("vram", help="peak GPU memory of each preset, one child process each")
    v.add_argument("--models", nargs="+", required=True, help="VARIANT=MODEL")
    v.add_argument("--presets", nargs="+", default=["low", "medium", "high"])
    v.add_argument("--low-cap-gib", type=float, default=4.0)
    v.add_argument("--out", required=True)
    one = sub.add_parser("vram-one", help="(child of vram)")
    one.add_argument("--model", required=True)
    one.add_argument("--preset", required=True)
    one.add_argument("--cap-gib", type=float)
    rep = sub.add_parser("report", help="merge run, vram and reference JSON; headline keys and plots")
    rep.add_argument("--run", required=True)
    rep.add_argument("--vram")
    rep.add_argument("--reference", help="JSON from tools/reference/bench_reference.py")
    rep.add_argument("--out", required=True)
    rep.add_argument("--plots")
    args = parser.parse_args()
    if args.command == "vram-one":
        print(json.dumps(vram_child(args)), flush=True)
    elif args.command == "vram":
        models = dict(item.split("=", 1) for item in args.models)
        results = bench_vram(models, args.presets, {"low": args.low_cap_gib})
        Path(args.out).write_text(json.dumps({"command": command_line(), "vram": results}, indent=2))
    elif args.command == "run":
        Path(args.out).write_text(json.dumps(run(args), indent=2))
    else:
        report = json.loads(Path(args.run).read_text())
        if args.vram:
            vram = json.loads(Path(args.vram).read_text())
            report["vram"], report["vram_command"] = vram["vram"], vram["command"]
        if args.reference:
            report["reference"] = json.loads(Path(args.reference).read_text())
        report["summary"] = summary(report)
        report.update(report["summary"])  # the headline keys at the top level too, as results files carry them
        if args.plots:
            report["plots"] = plot(report, Path(args.plots))
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    main()
