"""A timeline of the GPU and the GIL while the server answers 1, 16 and 64 concurrent streamed sentences (issue 20).

For each 100 ms of a measured burst it says how long the GPU ran T3's kernels, S3Gen's kernels, and nothing, how
often it alternated between the two, and which of the server's threads held the GIL for how long. Everything the
issue's next steps choose between (overlap T3 and S3Gen, move work off the event loop, batch differently) is read
from it.

How each part is measured:
* the server (this process): the real app under uvicorn on loopback (e2e's HTTPServer) with a torch profiler
  running (CUDA activity on a GPU). A kernel launched from the S3Gen worker thread (found through its CUDA runtime
  call's correlation id) is S3Gen's; the other kernels of this process (T3's prompt embeddings on the event loop,
  voice work) are `server_other`. Without a GPU, the CPU ops of those threads stand in for kernels (the CPU smoke).
* T3 (vLLM's engine-core process): vLLM's own torch profiler, switched on through the engine's profiler config
  (`VLLM_TORCH_PROFILER_DIR` on vLLMs older than the config) and AsyncLLM's start_profile/stop_profile; every
  kernel there is T3's. If no engine trace comes back, NVML's utilisation samples give the GPU's busy time and
  T3 = busy - S3Gen - server_other (`methods.t3` says which).
* the GIL: py-spy (`record --gil --idle --nonblocking --format chrometrace`) on this process and on the engine
  core's T3 worker; per thread class, the samples that saw it holding the GIL (a lower bound: py-spy's trace
  leaves out samples whose stack did not change) and an upper estimate. Skipped, with the reason, when py-spy is
  missing or cannot attach.
* the load: e2e's `burst` in a client process of its own, so that the benchmark's HTTP clients take no GIL time
  from the server.

Alignment: the three clocks are each checked against the wall clock (time.time_ns, one clock for every process on
the host) with marks made at known wall times before and after each measured window: a `record_function` span in
each torch trace (in the engine core through `collective_rpc`) and a 50 ms Python spin that py-spy sees holding
the GIL. Kineto writes `ts` in microseconds after the trace's `baseTimeNanoseconds`, in a clock of its own that
is checked rather than trusted (one standalone trace on the CPU sandbox this was written on read 3 s off the wall
clock), so the marks place each trace. `alignment` in the JSON gives each trace's correction and how far its two marks
disagree.

    python3 -m benchmarks.timeline --model /ckpt/english --preset high --max-batch-size 64 --levels 1 16 64 \
        --out timeline.json --plot timeline.png
    python3 -m benchmarks.timeline --model random-tiny --levels 1 2 --seconds 1 --max-new-tokens 20 \
        --out t.json --plot t.png   # CPU smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.e2e import HTTPServer, versions
from benchmarks.host import command_line, device_name
from benchmarks.http_load import burst
from benchmarks.texts import SENTENCE_TOKENS

BIN_NS = 100_000_000  # 100 ms
MARK_NAME = "timeline_clock_mark"
MARK_SPIN_S = 0.05
GIL_CLASSES = ("http_loop", "encoding", "s3gen", "t3_client_loop", "other")
PY_SPY_RATE_HZ = 250

Interval = tuple[int, int]  # wall-clock ns: start, end


# ---------------------------------------------------------------------------------------------- clock marks
def make_clock_mark() -> Callable[..., int]:
    """The marker, defined here so that cloudpickle sends it to vLLM's engine core by value. Called with vLLM's
    worker first there (collective_rpc), with None here. Returns the wall-clock ns at which its span began."""

    def timeline_clock_mark(_worker: Any, label: str, spin_s: float) -> int:
        import time as clock

        import torch as torch_

        start = clock.time_ns()
        with torch_.profiler.record_function(label):
            deadline = clock.perf_counter() + spin_s
            while clock.perf_counter() < deadline:  # holds the GIL: py-spy sees this frame
                pass
        return start

    return timeline_clock_mark


class ServerProfiler:
    """The torch profiler of this process, started, marked and stopped on the S3Gen thread (through the worker's
    own queue). Torch records CPU ops only on the thread that starts the profiler, which here is the one whose
    ops the CPU smoke needs; CUDA kernels (CUPTI) are recorded for every thread of the process either way."""

    def __init__(self, worker: Any, gpu: bool) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.worker = worker
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        self.prof = profile(activities=activities, record_shapes=False, with_stack=False)

    def start(self) -> None:
        self.worker.call(self.prof.start).result(timeout=300)

    def mark(self, label: str) -> int:
        return self.worker.call(make_clock_mark(), None, label, MARK_SPIN_S).result(timeout=300)

    def stop(self, path: Path) -> Path:
        self.worker.call(self.prof.stop).result(timeout=300)
        self.prof.export_chrome_trace(str(path))
        return path


# ---------------------------------------------------------------------------------------------- vLLM profiler
def enable_engine_profiler(trace_dir: Path) -> str:
    """Makes the next vLLM engine started in this process write torch traces (kernels, no stacks) to `trace_dir`
    on start_profile/stop_profile. Returns how: vLLM's ProfilerConfig, or the environment variable of old vLLMs."""
    import chatterbox_vllm.engine.vllm_engine as vllm_engine

    # The clock mark reaches the engine's worker as a function (cloudpickled by vLLM): allowed on this loopback
    # benchmark only.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

    try:
        from vllm.config import ProfilerConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        if "profiler_config" not in AsyncEngineArgs.__dataclass_fields__:
            raise ImportError("AsyncEngineArgs takes no profiler_config")
    except ImportError:
        os.environ["VLLM_TORCH_PROFILER_DIR"] = str(trace_dir)
        return "env VLLM_TORCH_PROFILER_DIR"
    wanted = dict(profiler="torch", torch_profiler_dir=str(trace_dir), torch_profiler_with_stack=False,
                  torch_profiler_use_gzip=False, torch_profiler_dump_cuda_time_total=False,
                  torch_profiler_record_shapes=False, ignore_frontend=True)  # fmt: skip
    fields = getattr(ProfilerConfig, "__dataclass_fields__", None) or getattr(ProfilerConfig, "model_fields", {})
    config = ProfilerConfig(**{k: v for k, v in wanted.items() if k in fields})
    original = vllm_engine.engine_kwargs

    def with_profiler(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**original(*args, **kwargs), "profiler_config": config}

    vllm_engine.engine_kwargs = with_profiler
    return "vllm ProfilerConfig"


class EngineProfiler:
    """vLLM's profiler in the engine core, driven through the AsyncLLM that ChatterboxTTS.engine runs on its loop."""

    def __init__(self, engine: Any, trace_dir: Path) -> None:
        self.engine = engine
        self.trace_dir = trace_dir
        self.llm = getattr(engine, "llm", None)
        self.error: str | None = None if self.llm is not None else "the T3 engine is not vLLM's AsyncLLM"
        self.mark_error: str | None = None
        if self.llm is not None and getattr(self.llm, "profiler", None) is not None:
            self.llm.profiler = None  # the front end's CPU profiler would run in this process, beside ours

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.engine._loop).result(timeout=300)

    def start(self) -> None:
        if self.error is None:
            try:
                self._run(self.llm.start_profile())
            except Exception as exc:  # noqa: BLE001 - a missing trace is reported, the timeline goes on
                self.error = f"start_profile: {type(exc).__name__}: {exc}"

    def mark(self, label: str) -> int | None:
        """A clock mark in the engine core's worker (None where collective_rpc cannot run it)."""
        if self.error is not None:
            return None
        try:
            result = self._run(self.llm.collective_rpc(make_clock_mark(), None, (label, MARK_SPIN_S)))
        except Exception as exc:  # noqa: BLE001 - the trace is then placed by its own clock
            self.mark_error = f"collective_rpc: {type(exc).__name__}: {exc}"[:300]
            return None
        return int(result[0] if isinstance(result, list | tuple) else result)

    def stop(self) -> Path | None:
        """Stops it; the trace the engine core wrote (None, with `error` set, where none came)."""
        if self.error is not None:
            return None
        try:
            self._run(self.llm.stop_profile())
        except Exception as exc:  # noqa: BLE001
            self.error = f"stop_profile: {type(exc).__name__}: {exc}"
            return None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # some versions write it after answering
            traces = sorted(self.trace_dir.rglob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
            if traces:
                time.sleep(0.5)
                return traces[-1]
            time.sleep(0.5)
        self.error = f"no trace file appeared in {self.trace_dir}"
        return None


# ---------------------------------------------------------------------------------------------- py-spy
def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class PySpy:
    """py-spy recording which thread of one process holds the GIL, until stopped."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.error: str | None = None
        self.process: subprocess.Popen | None = None
        binary = py_spy_binary()
        if binary is None:
            self.error = "py-spy is not installed (pip install py-spy==0.4.2)"
            return
        cmd = [binary, "record", "--gil", "--idle", "--nonblocking", "--format", "chrometrace",
               "--rate", str(PY_SPY_RATE_HZ), "--output", str(out), "--pid", str(pid)]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def check_started(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            self.error = f"py-spy exited at once: {self.process.stdout.read()[-500:] if self.process.stdout else ''}"
            self.process = None

    def stop(self) -> Path | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its trace on ^C
        try:
            output, _ = self.process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        if not self.out.is_file():
            self.error = f"py-spy wrote no trace (exit {self.process.returncode}): {(output or '')[-500:]}"
            return None
        return self.out


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out += [int(child), *descendants(int(child))]
    return out


def engine_worker_pid() -> int | None:
    """The vLLM process that runs T3's model: a worker of the engine core where there is one (vLLM's multiprocess
    executor), else the engine core (one GPU: the worker runs inside it)."""
    named: dict[str, int] = {}
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            for key in ("Worker", "EngineCore"):
                if key in name or key in Path(f"/proc/{pid}/comm").read_text():
                    named.setdefault(key, pid)
    return named.get("Worker", named.get("EngineCore"))


# ---------------------------------------------------------------------------------------------- intervals
def union(intervals: list[Interval]) -> list[Interval]:
    """Overlapping intervals merged: time during which at least one ran (kernels overlap across streams)."""
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def per_bin_ms(intervals: list[Interval], start: int, bins: int) -> list[float]:
    """ms of the union of `intervals` inside each 100 ms bin from `start`."""
    out = [0.0] * bins
    for s, e in union(intervals):
        s, e = max(s, start), min(e, start + bins * BIN_NS)
        while s < e:
            index = (s - start) // BIN_NS
            edge = min(e, start + (index + 1) * BIN_NS)
            out[index] += (edge - s) / 1e6
            s = edge
    return out


def switches_per_bin(labelled: list[tuple[int, str]], start: int, bins: int) -> list[int]:
    """How often the GPU went from a T3 kernel to an S3Gen one or back, counted at the later kernel's start."""
    out = [0] * bins
    previous = None
    for when, label in sorted(labelled):
        if previous is not None and label != previous and start <= when < start + bins * BIN_NS:
            out[(when - start) // BIN_NS] += 1
        previous = label
    return out


# ---------------------------------------------------------------------------------------------- torch traces
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def load_trace(path: Path) -> dict[str, Any]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def kineto_placement(trace: dict[str, Any], marks: dict[str, int | None]) -> tuple[Callable[[float], int], dict]:
    """ts (µs) -> wall ns: the trace's own clock (baseTimeNanoseconds + ts), moved by what its clock marks say."""
    base = int(trace.get("baseTimeNanoseconds", 0))
    found = {e["name"]: e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("name") in marks}
    offsets = [marks[name] - (base + round(found[name]["ts"] * 1000)) for name in marks
               if marks[name] is not None and name in found]  # fmt: skip
    offset = round(sum(offsets) / len(offsets)) if offsets else 0
    note = {"method": "clock marks" if offsets else "kineto clock (no mark found: unverified)",
            "correction_ms": offset / 1e6, "marks_found": len(offsets),
            "mark_disagreement_ms": (max(offsets) - min(offsets)) / 1e6 if offsets else None}  # fmt: skip
    return (lambda ts: base + round(ts * 1000) + offset), note


def spans(trace: dict[str, Any], place: Callable[[float], int], keep: Callable[[dict], bool]) -> list[dict]:
    out = []
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and "dur" in e and keep(e):
            start = place(e["ts"])
            out.append({"start": start, "end": start + round(e["dur"] * 1000), "event": e})
    return out


def server_device_work(trace: dict[str, Any], place: Callable[[float], int], s3gen: threading.Thread, gpu: bool
                       ) -> tuple[list[Interval], list[Interval], list[int]]:  # fmt: skip
    """(S3Gen, server_other) intervals of this process and the S3Gen start times. On a GPU: kernels, by the
    thread whose runtime call launched them (Kineto names it by its system id or its pthread id); on a CPU: the
    CPU ops of the S3Gen thread (the only thread the profiler records ops on)."""
    ids = {s3gen.native_id, s3gen.ident}
    if gpu:
        runtime = ("cuda_runtime", "cuda_driver")
        launcher = {e["args"]["correlation"]: e["tid"] for e in trace["traceEvents"]
                    if e.get("cat") in runtime and "correlation" in e.get("args", {})}  # fmt: skip
        work = spans(trace, place, lambda e: e.get("cat") in GPU_CATEGORIES)
        is_s3gen = [launcher.get(w["event"].get("args", {}).get("correlation")) in ids for w in work]
    else:
        work = spans(trace, place, lambda e: e.get("cat") == "cpu_op" and e.get("name") != MARK_NAME)
        is_s3gen = [w["event"].get("tid") in ids for w in work]
    mine = [(w["start"], w["end"]) for w, is_mine in zip(work, is_s3gen) if is_mine]
    other = [(w["start"], w["end"]) for w, is_mine in zip(work, is_s3gen) if not is_mine]
    return mine, other, [s for s, _ in mine]


def engine_device_work(trace: dict[str, Any], place: Callable[[float], int], gpu: bool) -> list[Interval]:
    category = (lambda e: e.get("cat") in GPU_CATEGORIES) if gpu else (lambda e: e.get("cat") == "cpu_op")
    return [(w["start"], w["end"]) for w in spans(trace, place, category)]


# ---------------------------------------------------------------------------------------------- NVML fallback
class NvmlBusy:
    """The GPU's utilisation (% of time a kernel ran over NVML's own sample period), sampled every 20 ms."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - no NVML: the fallback says so
            self.error = f"NVML: {type(exc).__name__}: {exc}"
            return
        self._thread = threading.Thread(target=self._poll, name="timeline-nvml", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self.samples.append((time.time_ns(), float(rates.gpu)))

    def stop(self) -> None:
        self._stop.set()

    def busy_ms(self, start: int, bins: int) -> list[float] | None:
        if self.error or not self.samples:
            return None
        out = []
        for index in range(bins):
            inside = [u for t, u in self.samples if start + index * BIN_NS <= t < start + (index + 1) * BIN_NS]
            out.append(sum(inside) / len(inside) / 100 * BIN_NS / 1e6 if inside else 0.0)
        return out


# ---------------------------------------------------------------------------------------------- py-spy traces
def gil_class(name: str, ident: int, roles: dict[int, str]) -> str:
    if ident in roles:
        return roles[ident]
    if name.startswith(("asyncio_", "ThreadPoolExecutor")):
        return "encoding"  # asyncio.to_thread: the server encodes audio there
    return "other"


def thread_idents(trace: list[dict]) -> dict[int, int]:
    """py-spy's tid -> the Python thread ident: the same number in py-spy 0.4.2; newer versions number threads from
    0 and name them ("IDENT: name") in thread_name events."""
    out = {}
    for e in trace:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            with contextlib.suppress(ValueError, KeyError, AttributeError):
                out[e["tid"]] = int(e["args"]["name"].split(":")[0])
    return out


def gil_observations(trace: list[dict]) -> list[tuple[int, int]]:
    """(ts µs, thread ident) of each sample at which py-spy saw a thread holding the GIL. py-spy's chrometrace
    writes a thread's events only at the samples that see it (with --gil: holding the GIL) and its stack changed,
    so repeated samples of one unchanged stack leave no event; the end events written when py-spy stops are no
    sample and are dropped."""
    idents = thread_idents(trace)
    stack_events = [e for e in trace if e.get("ph") in ("B", "E")]
    last = max((e["ts"] for e in stack_events), default=0)
    seen = {(e["ts"], idents.get(e["tid"], e["tid"])) for e in stack_events if e["ph"] == "B" or e["ts"] != last}
    return sorted(seen)


def gil_held(observations: list[tuple[int, int]], shift_ns: int, bridge: bool) -> dict[int, list[Interval]]:
    """Per thread, wall-clock spans it is taken to hold the GIL: one sample period at each observation (a lower
    bound), and with `bridge` the whole gap between two consecutive observations of the same thread with nothing
    else seen in between (an upper estimate: it kept the GIL with an unchanged stack, or it let it go and nobody
    else took it). Other gaps stay unattributed."""
    period = round(1e9 / PY_SPY_RATE_HZ)
    held: dict[int, list[Interval]] = {}
    for index, (ts, ident) in enumerate(observations):
        start = round(ts * 1000) + shift_ns
        end = start + period
        if bridge and index + 1 < len(observations) and observations[index + 1][1] == ident:
            end = max(end, round(observations[index + 1][0] * 1000) + shift_ns)
        held.setdefault(ident, []).append((start, end))
    return held


def is_mark_frame(name: str) -> bool:
    """py-spy names a frame by its function's name (0.4.2) or its qualified name (0.4.3 on Python 3.11+:
    `make_clock_mark.<locals>.timeline_clock_mark`)."""
    return name == MARK_NAME or name.endswith("." + MARK_NAME)


def py_spy_placement(trace: list[dict], marks: dict[str, int | None]) -> tuple[int, dict]:
    """py-spy's ts counts µs from its own start: the shift to wall ns, from the samples inside each clock mark
    (the middle of the first and last such sample against the middle of the mark's spin)."""
    inside = sorted(e["ts"] for e in trace if e.get("ph") == "B" and is_mark_frame(e.get("name", "")))
    groups: list[list[float]] = []
    for ts in inside:  # one group per mark: the marks are seconds apart
        if groups and ts - groups[-1][-1] < 0.5e6:
            groups[-1].append(ts)
        else:
            groups.append([ts])
    known = [v for v in marks.values() if v is not None]
    if not known or len(groups) != len(known):
        return 0, {"method": f"none: {len(groups)} clock marks seen, {len(known)} made (GIL not placed)"}
    offsets = [wall + MARK_SPIN_S * 1e9 / 2 - (g[0] + g[-1]) / 2 * 1000 for g, wall in zip(groups, sorted(known))]
    offset = round(sum(offsets) / len(offsets))
    return offset, {"method": "clock marks", "marks_found": len(offsets), "correction_ms": offset / 1e6,
                    "mark_disagreement_ms": (max(offsets) - min(offsets)) / 1e6}  # fmt: skip


# ---------------------------------------------------------------------------------------------- client
def client_main(args: argparse.Namespace) -> None:
    """The load, in a process of its own: a warm-up burst, then (on a line from stdin) bursts for `seconds`."""
    asyncio.run(burst(args.url, args.concurrency))
    print(json.dumps({"warm": True}), flush=True)
    sys.stdin.readline()
    bursts = []
    started = time.time_ns()
    while not bursts or time.time_ns() - started < args.seconds * 1e9:
        begin = time.time_ns()
        result = asyncio.run(burst(args.url, args.concurrency))
        bursts.append({**result, "start_ns": begin, "end_ns": time.time_ns()})
    print(json.dumps({"bursts": bursts}), flush=True)


class Client:
    def __init__(self, url: str, concurrency: int, seconds: float) -> None:
        cmd = [sys.executable, "-m", "benchmarks.timeline", "client", "--url", url, "--concurrency", str(concurrency),
               "--seconds", str(seconds)]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while line := self.process.stdout.readline():
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the client process ended (exit {self.process.wait()})")

    def wait_warm(self) -> None:
        self._line()

    def measure(self) -> list[dict[str, Any]]:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        bursts = self._line()["bursts"]
        self.process.wait(timeout=60)
        return bursts


# ---------------------------------------------------------------------------------------------- one level
def measure_level(tts: Any, server: HTTPServer, concurrency: int, seconds: float, work: Path, gpu: bool,
                  worker: Any) -> dict[str, Any]:  # fmt: skip
    level_dir = work / f"c{concurrency}"
    engine_dir = Path(os.environ.get("VLLM_TORCH_PROFILER_DIR") or work / "engine")
    for old in engine_dir.rglob("*.pt.trace.json*") if engine_dir.is_dir() else []:
        old.unlink()
    level_dir.mkdir(parents=True)
    client = Client(server.url, concurrency, seconds)
    client.wait_warm()
    spies = {"server": PySpy(os.getpid(), level_dir / "gil-server.json")}
    engine_pid = engine_worker_pid()
    if engine_pid is not None:
        spies["engine_core"] = PySpy(engine_pid, level_dir / "gil-engine.json")
    time.sleep(1.5)  # py-spy attaches
    for spy in spies.values():
        spy.check_started()
    engine = EngineProfiler(tts.engine, engine_dir)
    nvml = NvmlBusy() if gpu else None
    server_profiler = ServerProfiler(worker, gpu)
    server_profiler.start()
    engine.start()
    marks: dict[str, dict[str, int | None]] = {"server": {}, "engine": {}}
    for label in ("timeline_mark_a", "timeline_mark_b"):
        if label.endswith("b"):
            bursts = client.measure()
        marks["server"][label] = server_profiler.mark(label)
        marks["engine"][label] = engine.mark(label)
    engine_trace_path = engine.stop()
    server_trace_path = server_profiler.stop(level_dir / "server.pt.trace.json")
    if nvml:
        nvml.stop()
    gil_paths = {name: spy.stop() for name, spy in spies.items()}

    start, end = bursts[0]["start_ns"], bursts[-1]["end_ns"]
    bins = max(1, math.ceil((end - start) / BIN_NS))
    methods: dict[str, Any] = {"s3gen": ("CUDA kernels launched from the S3Gen thread (torch profiler, this process)"
                                         if gpu else "CPU ops on the S3Gen thread (no GPU)")}  # fmt: skip
    alignment: dict[str, Any] = {}
    server_trace = load_trace(server_trace_path)
    place, alignment["server_torch"] = kineto_placement(server_trace, marks["server"])
    s3gen, other, s3gen_starts = server_device_work(server_trace, place, worker._thread, gpu)
    methods["engine_mark"] = engine.mark_error or "collective_rpc ran the clock mark in the engine's worker"
    t3: list[Interval] | None = None
    if engine_trace_path is not None:
        engine_trace = load_trace(engine_trace_path)
        place_engine, alignment["engine_torch"] = kineto_placement(engine_trace, marks["engine"])
        t3 = engine_device_work(engine_trace, place_engine, gpu)
        methods["t3"] = "vLLM engine-core torch profiler: " + ("its CUDA kernels" if gpu else "its CPU ops (no GPU)")
    bins_out: dict[str, Any] = {
        "start_ms": [i * BIN_NS / 1e6 for i in range(bins)],
        "s3gen_ms": per_bin_ms(s3gen, start, bins),
        "server_other_ms": per_bin_ms(other, start, bins),
    }
    if t3 is not None:
        bins_out["t3_ms"] = per_bin_ms(t3, start, bins)
        bins_out["busy_ms"] = per_bin_ms(t3 + s3gen + other, start, bins)
        bins_out["switches"] = switches_per_bin([(s, "s3gen") for s in s3gen_starts] + [(s, "t3") for s, _ in t3],
                                                start, bins)  # fmt: skip
    else:
        busy = nvml.busy_ms(start, bins) if nvml else None
        methods["t3"] = (f"NVML utilisation: T3 = busy - S3Gen - server_other (engine trace: {engine.error})"
                         if busy else f"not measured (engine trace: {engine.error}; NVML: "
                         f"{nvml.error if nvml else 'no GPU'})")  # fmt: skip
        if busy:
            mine = per_bin_ms(s3gen + other, start, bins)
            bins_out["busy_ms"] = busy
            bins_out["t3_ms"] = [max(0.0, b - m) for b, m in zip(busy, mine)]
        bins_out["switches"] = None
    if "busy_ms" in bins_out:
        bins_out["idle_ms"] = [max(0.0, BIN_NS / 1e6 - b) for b in bins_out["busy_ms"]]
        bins_out["overlap_ms"] = [max(0.0, t + s + o - b) for t, s, o, b in zip(
            bins_out["t3_ms"], bins_out["s3gen_ms"], bins_out["server_other_ms"], bins_out["busy_ms"])]  # fmt: skip
    bins_out["gil_ms"], methods["gil"], alignment["gil"] = gil_bins(gil_paths, spies, marks, start, bins, server)

    window_ms = (end - start) / 1e6
    totals = {key: sum(values) for key, values in bins_out.items()
              if key.endswith("_ms") and key not in ("start_ms", "gil_ms") and values is not None}  # fmt: skip
    totals["switches"] = sum(bins_out["switches"]) if bins_out.get("switches") else None
    gil_totals = {cls: sum(v) for cls, v in (bins_out["gil_ms"] or {}).items()}
    return {
        "concurrency": concurrency,
        "window": {"start_ns": start, "end_ns": end, "ms": window_ms, "bins": bins, "bin_ms": BIN_NS / 1e6},
        "bursts": bursts,
        "requests": sum(b["concurrency"] for b in bursts),
        "failed": sum(b["failed"] for b in bursts),
        "audio_s": sum(b["audio_s"] for b in bursts),
        "rtf_aggregate": sum(b["audio_s"] for b in bursts) / (window_ms / 1000),
        "totals_ms": totals,
        "gil_totals_ms": gil_totals,
        "fractions": {key.removesuffix("_ms"): value / window_ms for key, value in totals.items()
                      if key.endswith("_ms")} | {f"gil_{cls}": v / window_ms for cls, v in gil_totals.items()},  # fmt: skip
        "bins": bins_out,
        "methods": methods,
        "alignment": alignment,
        "traces": str(level_dir),
    }


def gil_bins(paths: dict[str, Path | None], spies: dict[str, PySpy], marks: dict[str, dict[str, int | None]],
             start: int, bins: int, server: HTTPServer) -> tuple[dict[str, list[float]] | None, str, dict]:  # fmt: skip
    """ms per bin that each thread class of the server (and vLLM's T3 process, whole) held its process's GIL:
    CLASS (lower bound) and CLASS_upper (upper estimate); see `gil_held`."""
    if paths.get("server") is None:
        return None, f"not measured: {spies['server'].error}", {}
    roles = {server.thread.ident: "http_loop"}
    names = {}
    for thread in threading.enumerate():
        names[thread.ident] = thread.name
        if thread.name == "s3gen":
            roles[thread.ident] = "s3gen"
        elif thread.name == "chatterbox-vllm-engine":
            roles[thread.ident] = "t3_client_loop"
        elif thread.name == "timeline-nvml":
            roles[thread.ident] = "other"
    trace = json.loads(paths["server"].read_text())
    shift, note = py_spy_placement(trace, marks["server"])
    alignment = {"server": note}
    if note["method"] != "clock marks":
        return None, f"not placed: {note['method']}", alignment
    out: dict[str, list[float]] = {}
    for bridge, suffix in ((False, ""), (True, "_upper")):
        by_class: dict[str, list[Interval]] = {cls: [] for cls in GIL_CLASSES}
        for ident, held in gil_held(gil_observations(trace), shift, bridge).items():
            by_class[gil_class(names.get(ident, ""), ident, roles)] += held
        out |= {cls + suffix: per_bin_ms(held, start, bins) for cls, held in by_class.items()}
    method = f"py-spy --gil --idle at {PY_SPY_RATE_HZ} Hz on the server"
    if paths.get("engine_core") is not None:
        trace = json.loads(paths["engine_core"].read_text())
        shift, alignment["engine_core"] = py_spy_placement(trace, marks["engine"])
        if alignment["engine_core"]["method"] == "clock marks":
            for bridge, suffix in ((False, ""), (True, "_upper")):
                held = [span for spans_ in gil_held(gil_observations(trace), shift, bridge).values()
                        for span in spans_]  # fmt: skip
                out["engine_core" + suffix] = per_bin_ms(held, start, bins)
            method += " and vLLM's T3 worker process (its own GIL)"
        else:
            method += f"; T3 worker process not placed: {alignment['engine_core']['method']}"
    elif "engine_core" in spies:
        method += f"; engine core not measured: {spies['engine_core'].error}"
    else:
        method += "; engine core not measured: its process was not found"
    return out, method, alignment


# ---------------------------------------------------------------------------------------------- plot
def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    fig, axes = plt.subplots(2 * len(levels), 1, figsize=(12, 3.2 * len(levels)), squeeze=False)
    for row, level in enumerate(levels):
        bins = level["bins"]
        x = [t / 1000 for t in bins["start_ms"]]
        width = BIN_NS / 1e9
        gpu, gil = axes[2 * row][0], axes[2 * row + 1][0]
        bottom = [0.0] * len(x)
        for key, color in (("t3_ms", "tab:blue"), ("s3gen_ms", "tab:orange"), ("server_other_ms", "tab:purple"),
                           ("idle_ms", "lightgrey")):  # fmt: skip
            if bins.get(key):
                gpu.bar(x, bins[key], width, bottom=bottom, align="edge", color=color, label=key.removesuffix("_ms"))
                bottom = [b + v for b, v in zip(bottom, bins[key])]
        gpu.set(ylabel="ms per 100 ms", title=f"{level['concurrency']} concurrent: device time "
                f"({level['methods'].get('t3', '')[:60]})")  # fmt: skip
        gpu.legend(loc="upper right", fontsize=7)
        if bins.get("gil_ms"):
            bottom = [0.0] * len(x)
            for cls in GIL_CLASSES:
                gil.bar(x, bins["gil_ms"][cls], width, bottom=bottom, align="edge", label=cls)
                bottom = [b + v for b, v in zip(bottom, bins["gil_ms"][cls])]
            if "engine_core" in bins["gil_ms"]:
                gil.plot([v + width / 2 for v in x], bins["gil_ms"]["engine_core"], color="black", lw=1,
                         label="engine core (own GIL)")  # fmt: skip
            gil.legend(loc="upper right", fontsize=7, ncol=3)
        else:
            gil.text(0.5, 0.5, level["methods"]["gil"], ha="center", transform=gil.transAxes)
        gil.set(ylabel="GIL ms per 100 ms", xlabel="s into the measured window", title="server GIL holders")
    fig.suptitle(f"{report['device']} · {report['model']} · {report['date']}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from chatterbox_vllm.process_setup import configure_process
    from chatterbox_vllm.settings import Settings
    from chatterbox_vllm.tts import ChatterboxTTS

    work = Path(args.traces or tempfile.mkdtemp(prefix="timeline-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    engine_profiler = enable_engine_profiler(work / "engine")
    overrides: dict[str, Any] = {"model": args.model, "preset": args.preset, "device": args.device}
    if args.max_batch_size:
        overrides["max_batch_size"] = args.max_batch_size
    if "CHATTERBOX_S3GEN_LAYOUT" not in os.environ:
        # S3Gen's kernels are told apart by the thread that launched them in this process: the thread layout (the
        # default `auto` would put S3Gen in a process of its own on a GPU with preset high, out of this profile)
        overrides["s3gen_layout"] = "thread"
    settings = Settings(**overrides)
    configure_process(settings)  # as the server does at start: compile caches, TF32
    tts = ChatterboxTTS.from_settings(settings)
    gpu = tts.device.type == "cuda" and torch.cuda.is_available()
    http_settings = settings.model_copy(update={"max_new_tokens": args.max_new_tokens,
                                                "max_queue": max(args.levels) + 8})  # fmt: skip
    report: dict[str, Any] = {
        "device": device_name(), "date": dt.date.today().isoformat(), "command": command_line(),
        "model": args.model, "preset": args.preset, "limits": settings.limits().__dict__,
        "max_new_tokens": args.max_new_tokens, "versions": versions(), "engine_profiler": engine_profiler,
        "bin_ms": BIN_NS / 1e6, "notes": [
            "Every kernel of the server process is S3Gen's (the S3Gen thread) or server_other's (T3 prompt "
            "embeddings on the event loop, voice work); every kernel of vLLM's engine-core process is T3's.",
            "busy = union of all kernels (overlapping streams count once); overlap = T3 + S3Gen + other - busy.",
            "switches: alternations between T3 and S3Gen kernels in start order, per bin.",
            "GIL ms: py-spy --gil samples. Its chrometrace writes a thread only at samples where its stack changed, "
            "so gil_ms (one sample period per sample that saw the thread holding it) is a lower bound and "
            "gil_ms[CLASS_upper] (also the gaps between two samples of the same thread) an upper estimate. "
            "Classes: http_loop (uvicorn's event loop: HTTP, T3 prompt embeddings, the streams), "
            "encoding (asyncio.to_thread workers), s3gen, t3_client_loop (vLLM's AsyncLLM loop thread), other.",
        ],
    }  # fmt: skip
    try:
        with HTTPServer(tts, http_settings) as server:
            worker = server.server.config.app.state.model.require_ready().synthesizer._s3gen
            report["levels"] = []
            for concurrency in args.levels:
                level = measure_level(tts, server, concurrency, args.seconds, work, gpu, worker)
                report["levels"].append(level)
                print(json.dumps({k: level[k] for k in ("concurrency", "totals_ms", "gil_totals_ms", "methods")}),
                      flush=True)  # fmt: skip
    finally:
        tts.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="(the load process)")
    client.add_argument("--url", required=True)
    client.add_argument("--concurrency", type=int, required=True)
    client.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--model")
    parser.add_argument("--preset", default="high")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured bursts per level, repeated to fill it")
    parser.add_argument("--max-new-tokens", type=int, default=SENTENCE_TOKENS,
                        help="speech tokens per request (random weights rarely stop by themselves)")  # fmt: skip
    parser.add_argument("--traces", help="keep the raw traces here (default: a temporary directory)")
    parser.add_argument("--out")
    parser.add_argument("--plot")
    args = parser.parse_args()
    if args.command == "client":
        client_main(args)
        return
    if not args.model or not args.out:
        parser.error("--model and --out are required")
    report = run(args)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(report, Path(args.plot))


if __name__ == "__main__":
    main()
