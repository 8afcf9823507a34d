"""Issue 20's headline report: every figure of its targets table from the server as users start it.

The server is `chatterbox-vllm serve` in a subprocess of its own (`python -m chatterbox_vllm.cli serve`), in its
default process layout (vLLM's own default multiprocessing: VLLM_ENABLE_V1_MULTIPROCESSING is removed from its
environment) and default settings, except:
* --model, --preset and --port;
* CHATTERBOX_MAX_NEW_TOKENS, the speech tokens per text piece: random weights rarely sample T3's stop token, so it
  stands in for the real model's stop with the token count the real model writes for the text (benchmarks/texts.py:
  75 for a sentence, 500 for the paragraph over its pieces). `--no-token-cap` leaves it unset (real weights);
* the cache directories (XDG_CACHE_HOME, CHATTERBOX_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) in one
  directory, empty for the cold start and reused for the warm one.
Every request is a streaming HTTP client (benchmarks/http_load.py, as e2e.py uses), pcm.

What each figure is:
* ready_s_cold / ready_s_warm: from the process's start to /health answering 200, with an empty cache directory,
  then again with the cache directory the first start filled (`wait_ready`: the seam where a shared start-up
  measurement can replace this one);
* ttfb_ms_p50_c1: p50 over single requests (one at a time) of a sentence's first audio byte; ttfb_ms_p95_c16:
  p95 of the first audio byte over the requests of bursts of 16 concurrent sentences (each level warmed by one
  unmeasured burst first: S3Gen captures its graphs per batch shape the first time);
* x_rt_c64 / failed_c64: 64 concurrent sentences, audio seconds received / wall seconds of the burst (median over
  the measured bursts), and the failed requests of all of them; turbo_x_rt_c64 the same with the Turbo model;
* s3gen_beside_t3_ratio: S3Gen's throughput during those c64 bursts, from the server's /metrics: audio seconds the
  server sent (chatterbox_audio_seconds_total) per second its S3Gen thread was busy
  (chatterbox_s3gen_work_seconds_sum), divided by s3gen_alone_x_rt;
* s3gen_alone_x_rt: benchmarks/s3gen_profile.py's `profile_batches` in a child process (no T3, no server): 75-token
  pieces after the built-in voice's prompt, audio seconds per wall second, the best batch size, in the compute
  variant the server runs by default (float16 with compiled blocks on a GPU);
* t3_tok_per_s_1: one streamed request alone (server started warm), from vLLM's own request metrics in /metrics:
  (generated tokens - 1) / decode time (first token to last; inter-token latency where the decode-time metric is
  missing);
* paragraph_x_rt: benchmarks/texts.py's paragraph (~20 s of audio; its pieces capped to 500 tokens in all) in one
  streamed request, audio seconds / wall seconds, median of 3 after one unmeasured run;
* peak_vram_gib_low_multilingual: the multilingual model with preset low; the GPU's used memory (NVML, else
  nvidia-smi) polled from before the server starts to its end, minus what was used before it started, while it
  loads, speaks the paragraph and a full batch of sentences. On a CPU: the peak resident memory of the server's
  process tree, labelled as such (a smoke value only).

A GPU run is cut into parts (english, turbo, multilingual, s3gen) so that each device call stays under its time
limit; `part` runs the parts it is given in order and writes a JSON list (after each part, so a call cut short
brings back the finished ones), `merge` assembles the report from the lists:

    python -m benchmarks.headline part english --model /ckpt/english --out p1.json
    python -m benchmarks.headline part turbo s3gen --model /ckpt/english --turbo-model /ckpt/turbo --out p2.json
    python -m benchmarks.headline part multilingual --multilingual-model /ckpt/multilingual --out p3.json
    python -m benchmarks.headline merge --parts p1.json p2.json p3.json --out-dir benchmarks/results
    python -m benchmarks.headline table --report benchmarks/results/h200-2026-12-02-headline.json
    python -m benchmarks.headline run --quick --model random-tiny --turbo-model random-tiny-turbo \
        --multilingual-model random-tiny-multilingual --out-dir /tmp/results    # CPU smoke (tests)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from benchmarks.host import PeakPoller, command_line, device_name, free_port, gpu_used_mib
from benchmarks.http_load import burst_requests, pct, summarize
from benchmarks.texts import PARAGRAPH, PARAGRAPH_TOKENS, SENTENCE, SENTENCE_TOKENS

# The report's numeric figures, in the order of the table.
FIGURES = (
    "t3_tok_per_s_1", "paragraph_x_rt", "ttfb_ms_p50_c1", "ttfb_ms_p95_c16", "x_rt_c64", "failed_c64",
    "turbo_x_rt_c64", "s3gen_beside_t3_ratio", "s3gen_alone_x_rt", "ready_s_cold", "ready_s_warm",
    "peak_vram_gib_low_multilingual",
)  # fmt: skip
# Counters and histogram totals read from the server's /metrics (summed over label sets).
FIRST_AUDIO_STAGES = ("prepare", "t3", "s3gen")
METRICS = {
    "audio_s": ("chatterbox_audio_seconds_total",),
    "s3gen_work_s": ("chatterbox_s3gen_work_seconds_sum",),
    "s3gen_work_items": ("chatterbox_s3gen_work_seconds_count",),
    "s3gen_batches": ("chatterbox_s3gen_batch_size_count",),
    "s3gen_rows": ("chatterbox_s3gen_batch_size_sum",),
    "t3_requests": ("vllm:request_generation_tokens_count",),
    "t3_tokens": ("vllm:request_generation_tokens_sum",),
    "t3_decode_s": ("vllm:request_decode_time_seconds_sum",),
    "t3_inter_token_s": ("vllm:inter_token_latency_seconds_sum", "vllm:time_per_output_token_seconds_sum"),
    "t3_inter_tokens": ("vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count"),
    # where streamed requests' time to first audio went, by stage (a sample's `stage` label after the colon)
    **{f"first_audio_{stage}_s": (f"chatterbox_first_audio_stage_seconds_sum:{stage}",) for stage in FIRST_AUDIO_STAGES},
    **{f"first_audio_{stage}_n": (f"chatterbox_first_audio_stage_seconds_count:{stage}",)
       for stage in FIRST_AUDIO_STAGES},
}
# How long a server may take to answer /health 200 (BENCH_READY_TIMEOUT_S: a device call that must leave time for
# the stacks of a start that hangs, e.g. under MPS).
READY_TIMEOUT_S = float(os.environ.get("BENCH_READY_TIMEOUT_S", "900"))
# The compile caches' variables (chatterbox_vllm.compile_cache.CACHE_DIRECTORIES; named here to keep this light).
COMPILE_CACHE_VARIABLES = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                           "FLASHINFER_WORKSPACE_BASE", "CUDA_CACHE_PATH")  # fmt: skip


# ---------------------------------------------------------------------------------------------- the server
def cache_env(cache_dir: Path) -> dict[str, str]:
    """Every cache a start reads or fills, in one directory (the Docker volume's role)."""
    return {
        "XDG_CACHE_HOME": str(cache_dir),
        "CHATTERBOX_CACHE_DIR": str(cache_dir / "chatterbox-vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "torchinductor"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
    }


def wait_ready(process: subprocess.Popen, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until /health answers 200. The seam for start-up timing: a shared `measure_ready` may take its place, as
    long as it returns once the server serves and raises when it will not."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                response = client.get(f"{url}/health")
                if response.status_code == 200:
                    return
                if response.json().get("status") == "error":
                    raise RuntimeError(f"the server failed to load: {response.text[:500]}")
            time.sleep(0.1)
    raise TimeoutError(f"the server was not ready after {timeout_s:.0f} s")


class ServerProcess:
    """`chatterbox-vllm serve` as a user starts it, in a session of its own (so it and vLLM's engine core stop
    together); `ready_s`: from its start to /health 200."""

    def __init__(self, model: str, preset: str, cache_dir: Path, log: Path, max_new_tokens: int | None,
                 on_start: Callable[[subprocess.Popen], None] | None = None) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "chatterbox_vllm.cli", "serve", "--model", model, "--preset", preset,
                    "--port", str(self.port)]  # fmt: skip
        self.set_env = cache_env(cache_dir)
        if max_new_tokens:
            self.set_env["CHATTERBOX_MAX_NEW_TOKENS"] = str(max_new_tokens)
        # The caches are the benchmark's to place: a compile-cache variable of the caller's would win over
        # CHATTERBOX_CACHE_DIR in the server (a variable the user set wins), so none is passed on.
        inherited = {k: v for k, v in os.environ.items() if k not in COMPILE_CACHE_VARIABLES}
        self.env = {**inherited, **self.set_env}
        self.env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # vLLM's default, as the server runs without it
        # Python's fault handler: nothing changes unless a fatal signal comes; a start that hangs is sent SIGABRT
        # (`__enter__`), and each of its processes (server, vLLM's engine core, S3Gen's) then writes every thread's
        # stack to the log.
        self.env["PYTHONFAULTHANDLER"] = "1"
        self.max_new_tokens = max_new_tokens
        self.log = log
        self.on_start = on_start
        self.process: subprocess.Popen | None = None
        self.ready_s = math.nan
        self.startup: dict[str, Any] = {}

    def __enter__(self) -> "ServerProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            start = time.perf_counter()
            self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)  # fmt: skip
        try:
            if self.on_start is not None:
                self.on_start(self.process)
            wait_ready(self.process, self.url)
        except TimeoutError:
            self.dump_stacks()
            self.stop()
            raise
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - start
        self.startup = self._startup_phases()
        print(f"server ready in {self.ready_s:.1f} s: {shlex.join(self.cmd[1:])}; phases {json.dumps(self.startup)}",
              flush=True)  # fmt: skip
        return self

    def _startup_phases(self) -> dict[str, Any]:
        """Each model's start-up phases (s) and S3Gen's layout, from /health once ready (S3Gen's warm-ups finish
        before a model is marked ready): where a start's time went."""
        health: dict[str, Any] = {}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            health = httpx.get(f"{self.url}/health", timeout=30).json()
        return {str(m.get("id", i)): {"phases_s": m.get("startup_phases_s"), "s3gen": m.get("s3gen")}
                for i, m in enumerate(health.get("models") or [])}  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dump_stacks(self) -> None:
        """Every process of the server's session writes its threads' stacks to the log (and ends): where a start
        hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        print(f"server not ready: SIGABRT to its processes, their stacks are in {self.log}", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)  # drained by then: no request of ours is in flight
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)

    def describe(self) -> dict[str, Any]:
        """The command, the variables this benchmark set for it and every CHATTERBOX_/VLLM_ one it had."""
        passed = {k: v for k, v in self.env.items() if k.startswith(("CHATTERBOX_", "VLLM_")) or k in self.set_env}
        return {"command": shlex.join(self.cmd), "set_env": self.set_env, "env": passed, "ready_s": self.ready_s,
                "startup": self.startup}  # fmt: skip


def scrape(url: str) -> dict[str, float]:
    """METRICS as /metrics has them now (0 where a name is absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    by_sample: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names = [sample.name]
            if "stage" in sample.labels:
                names.append(f"{sample.name}:{sample.labels['stage']}")
            for name in names:
                by_sample[name] = by_sample.get(name, 0.0) + float(sample.value)
    return {key: sum(by_sample.get(name, 0.0) for name in names) for key, names in METRICS.items()}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


# ---------------------------------------------------------------------------------------------- measurements
def requests(url: str, concurrency: int, text: str = SENTENCE) -> tuple[list[dict[str, Any]], float]:
    """A burst once the server has let go of the last one's requests: a 64 burst right after another could find
    some of those still counted against the server's queue limit (64 by default) and get 429 for them."""
    wait_idle(url)
    return asyncio.run(burst_requests(url, concurrency, "pcm", text))


def wait_idle(url: str, timeout_s: float = 60.0) -> None:
    """Until /health says no speech request is in progress."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health", timeout=10).json().get("speech_requests_in_progress", 0) == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"speech requests still in progress after {timeout_s:.0f} s")


def measure_ttfb_c1(url: str, repeats: int) -> dict[str, Any]:
    """One sentence at a time: each one's first audio byte (ms)."""
    values = []
    for _ in range(repeats):
        results, _wall = requests(url, 1)
        if results[0]["ok"] and results[0]["ttfb_s"] is not None:
            values.append(1000 * results[0]["ttfb_s"])
    values.sort()
    return {"ttfb_ms_all": values, "ttfb_ms_p50": pct(values, 0.5), "failed": repeats - len(values)}


def measure_burst_ttfb(url: str, concurrency: int, bursts: int) -> dict[str, Any]:
    """First audio bytes over `bursts` bursts of `concurrency` sentences (after one unmeasured burst), pooled."""
    requests(url, concurrency)
    levels, values = [], []
    for _ in range(bursts):
        before = scrape(url)
        results, wall = requests(url, concurrency)
        d = delta(before, scrape(url))
        level = summarize(results, wall, concurrency)
        # the server's mean seconds per stage of first audio in this burst (prepare, t3, s3gen: its metrics' docs)
        level["first_audio_stages_ms"] = {
            stage: 1000 * d[f"first_audio_{stage}_s"] / d[f"first_audio_{stage}_n"]
            for stage in FIRST_AUDIO_STAGES if d[f"first_audio_{stage}_n"]
        }  # fmt: skip
        levels.append(level)
        values += [1000 * r["ttfb_s"] for r in results if r["ok"] and r["ttfb_s"] is not None]
    values.sort()
    return {"concurrency": concurrency, "bursts": levels, "ttfb_ms_p50": pct(values, 0.5),
            "ttfb_ms_p95": pct(values, 0.95), "failed": sum(level["failed"] for level in levels)}  # fmt: skip


def measure_throughput(url: str, concurrency: int, bursts: int) -> dict[str, Any]:
    """Aggregate x real time of bursts of `concurrency` sentences (after one unmeasured burst), with S3Gen's work
    during them from the server's metrics."""
    requests(url, concurrency)
    levels = []
    for _ in range(bursts):
        before = scrape(url)
        results, wall = requests(url, concurrency)
        d = delta(before, scrape(url))
        level = summarize(results, wall, concurrency)
        level["server"] = {
            "audio_s": d["audio_s"],
            "s3gen_busy_s": d["s3gen_work_s"],
            "s3gen_busy_fraction": d["s3gen_work_s"] / wall if wall else None,
            "s3gen_work_items": int(d["s3gen_work_items"]),
            "s3gen_batches": int(d["s3gen_batches"]),
            "s3gen_mean_batch_rows": d["s3gen_rows"] / d["s3gen_batches"] if d["s3gen_batches"] else None,
            "s3gen_audio_s_per_busy_s": d["audio_s"] / d["s3gen_work_s"] if d["s3gen_work_s"] else None,
        }
        levels.append(level)
    per_busy = [lv["server"]["s3gen_audio_s_per_busy_s"] for lv in levels if lv["server"]["s3gen_audio_s_per_busy_s"]]
    rows = [lv["server"]["s3gen_mean_batch_rows"] for lv in levels if lv["server"]["s3gen_mean_batch_rows"]]
    return {
        "concurrency": concurrency,
        "bursts": levels,
        "x_rt": statistics.median(lv["rtf_aggregate"] for lv in levels),
        "failed": sum(lv["failed"] for lv in levels),
        "s3gen_audio_s_per_busy_s": statistics.median(per_busy) if per_busy else None,
        "s3gen_mean_batch_rows": statistics.median(rows) if rows else None,
    }


def measure_t3_one_stream(url: str) -> dict[str, Any]:
    """T3's speed for one stream alone, from vLLM's request metrics of one streamed request."""
    requests(url, 1)  # warm
    before = scrape(url)
    results, wall = requests(url, 1)
    d = delta(before, scrape(url))
    report: dict[str, Any] = {"request": summarize(results, wall, 1), "metrics": d}
    if d["t3_decode_s"] > 0 and d["t3_tokens"] > d["t3_requests"]:
        report["method"] = "vllm:request_decode_time_seconds and vllm:request_generation_tokens"
        report["tok_per_s"] = (d["t3_tokens"] - d["t3_requests"]) / d["t3_decode_s"]
    elif d["t3_inter_token_s"] > 0:
        report["method"] = "vllm inter-token latency"
        report["tok_per_s"] = d["t3_inter_tokens"] / d["t3_inter_token_s"]
    else:
        report["method"] = "not measured: /metrics has no vLLM request metrics"
        report["tok_per_s"] = None
    return report


def measure_paragraph(url: str, repeats: int) -> dict[str, Any]:
    """The paragraph in one streamed request: audio seconds per wall second, median of `repeats` after a warm run."""
    requests(url, 1, PARAGRAPH)
    runs = []
    for _ in range(repeats):
        results, wall = requests(url, 1, PARAGRAPH)
        if not results[0]["ok"]:
            raise RuntimeError(f"paragraph request failed: {results[0]}")
        runs.append({"wall_s": wall, "audio_s": results[0]["audio_s"], "ttfb_s": results[0]["ttfb_s"]})
    return {
        "runs": runs,
        "x_rt": statistics.median(r["audio_s"] / r["wall_s"] for r in runs),
        "audio_s": statistics.median(r["audio_s"] for r in runs),
    }


def paragraph_tokens_per_piece() -> int:
    """The per-piece token cap that gives the paragraph the real model's length over the server's pieces."""
    from chatterbox_vllm.settings import Settings
    from chatterbox_vllm.text.chunking import split_for_synthesis

    return max(1, math.ceil(PARAGRAPH_TOKENS / len(split_for_synthesis(PARAGRAPH, Settings().chunk_chars))))


# ---------------------------------------------------------------------------------------------- GPU memory
class PeakMemory(PeakPoller):
    """The GPU's used memory polled in a thread (NVML, else nvidia-smi), its peak minus the use before; on a CPU the
    peak resident memory of one process tree instead (`method` says which)."""

    def __init__(self) -> None:
        super().__init__()
        self.method = "cpu_rss"
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.method = "nvml_device_used"
        except Exception:  # no NVML: nvidia-smi, or the CPU stand-in
            if gpu_used_mib() is not None:
                self.method = "nvidia_smi_device_used"
        self.interval_s = 0.02 if self.method == "nvml_device_used" else 0.1
        self.pid: int | None = None
        self.per_process: dict[int, dict[str, Any]] = {}  # pid -> its name and peak GiB (NVML only)
        self.baseline = self.peak = self.used() if self.method != "cpu_rss" else 0

    def used(self) -> float:
        if self.method == "nvml_device_used":
            import pynvml

            self._note_processes()
            return float(pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used)
        if self.method == "nvidia_smi_device_used":
            return (gpu_used_mib() or 0.0) * 2**20
        import psutil

        if self.pid is None:
            return 0.0
        try:
            root = psutil.Process(self.pid)
            return float(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
        except psutil.Error:
            return 0.0

    def _note_processes(self) -> None:
        """Each GPU process's peak use (NVML's per-process figure; absent where the driver does not give it, e.g. in
        some containers), so a report says which process holds the memory: the server's or vLLM's engine core."""
        import pynvml

        try:
            running = pynvml.nvmlDeviceGetComputeRunningProcesses(self._nvml)
        except pynvml.NVMLError:
            return
        for process in running:
            used = getattr(process, "usedGpuMemory", None)
            if used is None:
                continue
            known = self.per_process.setdefault(process.pid, {"name": _process_name(process.pid), "peak_gib": 0.0})
            known["peak_gib"] = max(known["peak_gib"], used / 2**30)

    @property
    def peak_gib(self) -> float:
        return (self.peak - self.baseline) / 2**30


def _process_name(pid: int) -> str:
    """A GPU process's short name: its title (vLLM names its engine core `VLLM::EngineCore`) or command line."""
    import psutil

    try:
        process = psutil.Process(pid)
        return " ".join(process.cmdline()[:4])[:120] or process.name()
    except psutil.Error:
        return "?"


def device_slug(name: str) -> str:
    """A results file's device prefix: h200 for 'NVIDIA H200', cpu for a CPU."""
    if name.startswith("CPU"):
        return "cpu"
    found = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", name)
    return (found.group(1) if found else re.sub(r"\W+", "-", name)).lower()


# ---------------------------------------------------------------------------------------------- parts
def part_english(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Cold start, first bytes at 1 and 16, 64 concurrent with S3Gen's share; then a warm start (same caches), T3
    for one stream and the paragraph."""
    cache = fresh_dir(work / "cache")
    counts = quick_counts(args.quick)
    sentence_cap = None if args.no_token_cap else SENTENCE_TOKENS
    paragraph_cap = None if args.no_token_cap else paragraph_tokens_per_piece()
    out.update(model=args.model, preset=args.preset, cache_dir=str(cache))
    with ServerProcess(args.model, args.preset, cache, work / "english-cold.log", sentence_cap) as server:
        out["cold_server"] = server.describe()
        requests(server.url, 1)  # the first request of a server pays for lazy work
        out["ttfb_c1"] = measure_ttfb_c1(server.url, counts["ttfb_repeats"])
        out["ttfb_c16"] = measure_burst_ttfb(server.url, counts["c16"], counts["c16_bursts"])
        out["c64"] = measure_throughput(server.url, counts["c64"], counts["c64_bursts"])
    with ServerProcess(args.model, args.preset, cache, work / "english-warm.log", paragraph_cap) as server:
        out["warm_server"] = server.describe()
        out["t3_one_stream"] = measure_t3_one_stream(server.url)
        out["paragraph"] = measure_paragraph(server.url, counts["paragraph_repeats"])
    out["figures"] = {
        "ready_s_cold": out["cold_server"]["ready_s"],
        "ready_s_warm": out["warm_server"]["ready_s"],
        "ttfb_ms_p50_c1": out["ttfb_c1"]["ttfb_ms_p50"],
        "ttfb_ms_p95_c16": out["ttfb_c16"]["ttfb_ms_p95"],
        "x_rt_c64": out["c64"]["x_rt"],
        "failed_c64": out["c64"]["failed"],
        "t3_tok_per_s_1": out["t3_one_stream"]["tok_per_s"],
        "paragraph_x_rt": out["paragraph"]["x_rt"],
    }


def part_turbo(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """The Turbo model at 64 concurrent."""
    counts = quick_counts(args.quick)
    sentence_cap = None if args.no_token_cap else SENTENCE_TOKENS
    out.update(model=args.turbo_model, preset=args.preset)
    with ServerProcess(args.turbo_model, args.preset, fresh_dir(work / "cache-turbo"), work / "turbo.log",
                       sentence_cap) as server:  # fmt: skip
        out["server"] = server.describe()
        requests(server.url, 1)
        out["c64"] = measure_throughput(server.url, counts["c64"], counts["c64_bursts"])
    out["figures"] = {"turbo_x_rt_c64": out["c64"]["x_rt"]}


def part_multilingual(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """The multilingual model's peak memory with preset low, from before its start through the paragraph and a full
    batch of sentences."""
    from chatterbox_vllm.settings import Settings

    full_batch = Settings(preset="low").limits().max_batch_size
    paragraph_cap = None if args.no_token_cap else paragraph_tokens_per_piece()
    out.update(model=args.multilingual_model, preset="low", full_batch=full_batch)
    with PeakMemory() as peak:
        # (the CPU stand-in follows the server's process tree from its start)
        with ServerProcess(args.multilingual_model, "low", fresh_dir(work / "cache-multilingual"),
                           work / "multilingual-low.log", paragraph_cap,
                           on_start=lambda process: setattr(peak, "pid", process.pid)) as server:  # fmt: skip
            out["server"] = server.describe()
            requests(server.url, 1, PARAGRAPH)
            load, wall = requests(server.url, full_batch)
    out.update(load=summarize(load, wall, full_batch), method=peak.method, peak_gib=peak.peak_gib,
               baseline_gib=peak.baseline / 2**30, per_process=list(peak.per_process.values()))  # fmt: skip
    if out["load"]["failed"]:
        raise RuntimeError(f"the full batch failed: {out['load']['errors']}")
    out["figures"] = {"peak_vram_gib_low_multilingual": peak.peak_gib}


def part_s3gen(args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """S3Gen alone: s3gen_profile.py's batch profile in a child process, the best batch's x real time."""
    rows = [1, 2] if args.quick else [1, 8, 16, 32, 64]
    tokens = 25 if args.quick else 75  # --quick: a CPU smoke, shorter pieces
    gpu = not device_name().startswith("CPU")
    variants = args.s3gen_variants or (["fp16_compiled"] if gpu else ["fp32"])
    child_out = work / "s3gen-alone.json"
    cmd = [sys.executable, "-m", "benchmarks.headline", "s3gen-child", "--model", args.model,
           "--tokens", str(tokens), "--rows", *map(str, rows), "--variants", *variants,
           "--device", "cuda" if gpu else "cpu", "--out", str(child_out)]  # fmt: skip
    env = {**os.environ, **cache_env(fresh_dir(work / "cache-s3gen"))}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"S3Gen profile failed: {done.stderr[-3000:]}")
    profile = json.loads(child_out.read_text())
    by_rows = {
        f"{variant}_rows{r}": profile[f"{variant}_rows{r}_x_real_time"]
        for variant in variants for r in rows if f"{variant}_rows{r}_x_real_time" in profile
    }  # fmt: skip
    best = max(by_rows, key=by_rows.get)
    out.update(command_child=shlex.join(cmd), profile=profile, x_rt_by_batch=by_rows, best=best,
               figures={"s3gen_alone_x_rt": by_rows[best]})  # fmt: skip


def s3gen_child(args: argparse.Namespace) -> None:
    from benchmarks.s3gen_profile import profile_batches
    from chatterbox_vllm.checkpoint.hub import resolve_model

    directory, _layout = resolve_model(args.model)  # a name (random-tiny) or a directory
    report = {"tokens": args.tokens, "variants": args.variants, "device": args.device}
    report.update(profile_batches(str(directory), args.tokens, args.rows, args.variants, device=args.device))
    Path(args.out).write_text(json.dumps(report, indent=1))


PARTS = {"english": part_english, "turbo": part_turbo, "multilingual": part_multilingual, "s3gen": part_s3gen}


def quick_counts(quick: bool) -> dict[str, int]:
    """How many requests each measurement makes: --quick (CPU smoke) replaces 16 and 64 by 1 and 2."""
    if quick:
        return {"ttfb_repeats": 2, "c16": 1, "c16_bursts": 1, "c64": 2, "c64_bursts": 1, "paragraph_repeats": 1}
    return {"ttfb_repeats": 9, "c16": 16, "c16_bursts": 3, "c64": 64, "c64_bursts": 2, "paragraph_repeats": 3}


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_part(name: str, args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """One part; what it measured is saved even when it fails or is stopped (with `error`, without `figures`)."""
    work = Path(args.work or tempfile.mkdtemp(prefix="headline-"))
    start = time.perf_counter()
    report: dict[str, Any] = {"part": name, "device": device_name(), "date": dt.date.today().isoformat(),
                              "command": command_line(), "quick": args.quick, "work": str(work)}
    try:
        PARTS[name](args, work, report)
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        raise
    finally:
        report["wall_s"] = time.perf_counter() - start
        save(report)
    print(name, json.dumps(report["figures"]), flush=True)
    return report


def run_parts(names: list[str], args: argparse.Namespace, out: Path) -> None:
    """Each named part in turn, every finished one written to `out` at once (a list), so that a call cut short
    still brings back what it measured."""
    done: list[dict[str, Any]] = []
    for name in names:
        done.append(run_part(name, args, lambda report: out.write_text(json.dumps([*done, report], indent=2))))


# ---------------------------------------------------------------------------------------------- the report
DEFINITIONS = {
    "layout": "the server as users start it: `python -m chatterbox_vllm.cli serve --model M --preset P --port N` in "
    "a subprocess, vLLM's default multiprocessing (VLLM_ENABLE_V1_MULTIPROCESSING unset), default settings but "
    "CHATTERBOX_MAX_NEW_TOKENS (random weights' stand-in for the stop token) and the cache directories; streaming "
    "HTTP clients, pcm",
    "s3gen_beside_t3_ratio": "(audio seconds the server sent during the c64 bursts / seconds its S3Gen thread was busy"
    ", from /metrics) / s3gen_alone_x_rt",
    "t3_tok_per_s_1": "one streamed request alone on the warm server: (generated tokens - 1) / decode time, from "
    "vLLM's request metrics in /metrics",
    "peak_vram_gib_low_multilingual": "the GPU's used memory, peak minus before the server started (NVML or "
    "nvidia-smi; on a CPU the server tree's peak RSS)",
}


def merge(parts: list[dict[str, Any]], *, allow_missing: bool = False) -> dict[str, Any]:
    """One report from the parts: the figures at the top level, each part's detail under its name.
    `allow_missing`: a part that did not run (device time ran out) leaves its figures null and is named in
    `missing_parts`; the report is then written as `...-headline-partial.json`, so it is never taken for a whole one."""
    failed = [f"{part['part']}: {part['error']}" for part in parts if part.get("error")]
    if failed:
        raise SystemExit("parts that failed:\n" + "\n".join(failed))
    by_name = {part["part"]: part for part in parts}
    missing = sorted(set(PARTS) - set(by_name))
    if missing and not allow_missing:
        raise SystemExit(f"missing parts: {', '.join(missing)} (--allow-missing writes a partial report)")
    figures: dict[str, Any] = {}
    for part in parts:
        figures.update(part["figures"])
    english = by_name.get("english")
    c64 = english["c64"] if english else {}
    beside = c64.get("s3gen_audio_s_per_busy_s")
    alone = figures.get("s3gen_alone_x_rt")
    figures["s3gen_beside_t3_ratio"] = beside / alone if beside and alone else None
    s3gen = by_name.get("s3gen")
    same_batch = alone_at_rows(s3gen["x_rt_by_batch"], c64.get("s3gen_mean_batch_rows")) if s3gen else None
    devices = sorted({part["device"] for part in parts})
    report: dict[str, Any] = {key: figures.get(key) for key in FIGURES}
    report.update(
        device=devices[0] if len(devices) == 1 else " / ".join(devices),
        date=min(part["date"] for part in parts),
        command=" ; ".join(dict.fromkeys(part["command"] for part in parts)),  # each command once, in order
        merge_command=command_line(),
        quick=any(part["quick"] for part in parts),
        definitions=DEFINITIONS,
        s3gen_beside={
            "audio_s_per_busy_s": beside,
            "mean_batch_rows": c64.get("s3gen_mean_batch_rows"),
            "alone_x_rt_at_about_that_batch": same_batch,
            "ratio_at_about_that_batch": beside / same_batch if beside and same_batch else None,
        },
        missing_parts=missing,
        **{name: by_name.get(name) for name in PARTS},
    )
    check(report, allow_null=allow_missing)
    return report


def alone_at_rows(x_rt_by_batch: dict[str, float], rows: float | None) -> float | None:
    """S3Gen alone's x real time at the profiled batch size nearest the server's mean batch."""
    if not rows:
        return None
    sizes = {int(key.rsplit("rows", 1)[1]): value for key, value in x_rt_by_batch.items()}
    return sizes[min(sizes, key=lambda size: abs(size - rows))]


def check(report: dict[str, Any], *, allow_null: bool = False) -> None:
    """Every figure a finite number (or null, in a partial report), and the strings there."""
    bad = [key for key in FIGURES
           if not (allow_null and report.get(key) is None)
           and (not isinstance(report.get(key), (int, float)) or not math.isfinite(report[key]))]  # fmt: skip
    if bad:
        raise SystemExit(f"figures without a number: {', '.join(bad)}")
    for key in ("device", "date", "command"):
        if not isinstance(report.get(key), str) or not report[key]:
            raise SystemExit(f"{key} missing")


def report_path(out_dir: Path, report: dict[str, Any]) -> Path:
    partial = "-partial" if report.get("missing_parts") else ""
    return out_dir / f"{device_slug(report['device'])}-{report['date']}-headline{partial}.json"


# ---------------------------------------------------------------------------------------------- the table
# The table: figure, target (as text, and the comparison), the 2026-12-01 figure (NVIDIA H200, main
# 433ad1e; its HTTP first bytes from streaming clients of the server as users start it).
TARGETS: dict[str, tuple[str, str, str, float, str]] = {
    "t3_tok_per_s_1": ("T3 tokens/s, one stream with CFG", "≥ 1,000", ">=", 1000, "430"),
    "paragraph_x_rt": ("paragraph (texts.py, ~20 s audio), x real time, median of 3", "≥ 40", ">=", 40, "12.7"),
    "ttfb_ms_p50_c1": ("first audio byte over HTTP, pcm, one sentence: p50 at 1 concurrent (ms)", "≤ 100", "<=", 100,
                       "206–280"),
    "ttfb_ms_p95_c16": ("first audio byte over HTTP, pcm, one sentence: p95 at 16 concurrent (ms)", "≤ 250", "<=",
                        250, "2,536"),
    "x_rt_c64": ("64 concurrent sentences, aggregate x real time", "≥ 300", ">=", 300, "53.6"),
    "failed_c64": ("64 concurrent sentences, failed requests", "0", "<=", 0, "0"),
    "turbo_x_rt_c64": ("64 concurrent sentences with Turbo, aggregate x real time", "≥ 600", ">=", 600, "—"),
    "s3gen_beside_t3_ratio": ("S3Gen throughput beside T3 at 64 concurrent / S3Gen alone", "≥ 0.85", ">=", 0.85,
                              "~0.5"),
    "s3gen_alone_x_rt": ("S3Gen alone, 75-token pieces, best batch, x real time", "≥ 500", ">=", 500, "180 (H100)"),
    "ready_s_cold": ("engine ready after start, cold (s)", "≤ 90", "<=", 90, "206–235"),
    "ready_s_warm": ("engine ready after start, with the caches of a previous start (s)", "≤ 30", "<=", 30, "67"),
    "peak_vram_gib_low_multilingual": ("peak GPU memory, preset low, multilingual (GiB)", "≤ 4", "<=", 4, "3.85"),
}  # fmt: skip


def meets(key: str, value: float) -> bool:
    _label, _text, op, bound, _old = TARGETS[key]
    return value >= bound if op == ">=" else value <= bound


def number(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"


def table(report: dict[str, Any]) -> str:
    """BENCHMARKS.md's opening table: each figure's target, its 2026-12-01 value and this report's."""
    latest = f"latest ({report['date']}, {report['device']})" if report else "latest"
    lines = [f"| figure | target | 2026-12-01 | {latest} |", "|---|---|---|---|"]
    for key in FIGURES:
        label, target, _op, _bound, old = TARGETS[key]
        value = report.get(key)
        if not report:
            shown = "not measured yet"
        else:
            shown = "—" if value is None else f"{number(value)} {'✓' if meets(key, value) else '✗'}"
        lines.append(f"| {label} | {target} | {old} | {shown} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="english", help="the English checkpoint (T3 and S3Gen figures)")
    parser.add_argument("--turbo-model", default="turbo")
    parser.add_argument("--multilingual-model", default="multilingual")
    parser.add_argument("--preset", default="high")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: 1 and 2 concurrent for 16 and 64, 1 run each")
    parser.add_argument("--no-token-cap", action="store_true",
                        help="real weights: leave CHATTERBOX_MAX_NEW_TOKENS unset (the model stops by itself)")
    parser.add_argument("--s3gen-variants", nargs="+", help="s3gen_profile.py VARIANTS (default: the server's)")
    parser.add_argument("--work", help="logs and cache directories (default: a new temporary directory)")


def stop_on_sigterm() -> None:
    """SIGTERM (a device call's time limit, `timeout`) unwinds like Ctrl-C, so the servers started here stop too."""

    def raise_exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, raise_exit)


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    part = sub.add_parser("part", help="parts of a run, in order, as a JSON list")
    part.add_argument("names", nargs="+", choices=list(PARTS))
    add_model_args(part)
    part.add_argument("--out", required=True)
    whole = sub.add_parser("run", help="every part in this process, then the report")
    add_model_args(whole)
    whole.add_argument("--out-dir", required=True, help="the report lands here as <device>-<date>-headline.json")
    m = sub.add_parser("merge", help="the parts' JSON into the report")
    m.add_argument("--parts", nargs="+", required=True)
    m.add_argument("--out-dir", required=True)
    m.add_argument("--allow-missing", action="store_true",
                   help="write a partial report (null figures, missing_parts) when some parts did not run")
    t = sub.add_parser("table", help="BENCHMARKS.md's opening table (markdown) from a report")
    t.add_argument("--report", help="a headline report (none: the latest column says 'not measured yet')")
    child = sub.add_parser("s3gen-child", help="(child of the s3gen part)")
    child.add_argument("--model", required=True)
    child.add_argument("--tokens", type=int, default=75)
    child.add_argument("--rows", type=int, nargs="+", required=True)
    child.add_argument("--variants", nargs="+", required=True)
    child.add_argument("--device", default="cuda")
    child.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.action == "part":
        run_parts(args.names, args, Path(args.out))
    elif args.action in ("run", "merge"):
        if args.action == "run":
            parts = [run_part(name, args, lambda _report: None) for name in PARTS]
        else:
            parts = [part for path in args.parts for part in json.loads(Path(path).read_text())]
        report = merge(parts, allow_missing=args.action == "merge" and args.allow_missing)
        out = report_path(Path(args.out_dir), report)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps({key: report[key] for key in (*FIGURES, "device", "date")}, indent=2))
        print(f"wrote {out}")
    elif args.action == "table":
        print(table(json.loads(Path(args.report).read_text()) if args.report else {}))
    else:
        s3gen_child(args)


if __name__ == "__main__":
    main()
