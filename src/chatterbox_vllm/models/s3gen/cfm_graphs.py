"""The flow-matching ODE (`ConditionalCFM`) replayed as CUDA graphs, one per padded batch shape.

Profiled on an H100 (benchmarks/s3gen_profile.py): one Euler step of the estimator on a sentence (2 x ~460 frames)
took ~30 ms, almost all of it Python and kernel-launch overhead of its ~60 transformer and resnet blocks, so
S3Gen, not T3, bounded first audio and throughput. A CUDA graph of the whole n-step loop launches it once.

Graphs need fixed shapes, so frames are padded on the right to a multiple of `bucket_frames`, with mask, mu and
cond zero there. That leaves the real frames' result unchanged: the estimator's convolutions are causal (a
padded frame never feeds an earlier one), its attention masks padded keys out, its norms are per frame, and every
block multiplies by the mask. `padded_solve` is that computation, eager; tests check it against the unpadded one.
The same holds for filler rows (rows never mix), so any graph at least as large as a batch's bucket serves it.

No capture on the request path. A capture takes ~1 s (an H200: Python tracing the whole n-step loop, plus an eager
warm-up run), and the S3Gen worker thread that calls `CFMGraphs` vocodes nothing meanwhile: at 16 concurrent
streams, batches of rows first seen in a burst stalled first audio by 2-2.5 s. So a batch whose bucket is not
captured runs at once on a captured graph that covers it (`covering_bucket`: at most ~2x its padded cost), else
eagerly (`padded_solve`; the flow blocks are compiled with dynamic shapes, so eager is launch-bound, far cheaper
than a capture), and its bucket is queued for a capturer thread (`CaptureQueue`). Start-up captures
(`capture_up_to`, `capture`) stay synchronous, before any request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

Solver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def bucket_length(frames: int, bucket_frames: int) -> int:
    return max(bucket_frames, math.ceil(frames / bucket_frames) * bucket_frames)


ROW_STEP = 16  # above this many rows, buckets grow by this much (not doubling: 33 rows would run as 64)


def batch_bucket(rows: int) -> int:
    """Rows rounded up to a power of two up to ROW_STEP, then to a multiple of it (32, 48, 64): few graph shapes
    serve every batch size, and a large batch wastes at most ROW_STEP - 1 filler rows."""
    if rows > ROW_STEP:
        return math.ceil(rows / ROW_STEP) * ROW_STEP
    return 1 << max(0, rows - 1).bit_length()


def pad_frames(x: torch.Tensor, length: int) -> torch.Tensor:
    """`[B, C, T]` zero-padded on the right to `length` frames."""
    return torch.nn.functional.pad(x, (0, length - x.size(-1)))


def pad_rows(x: torch.Tensor, rows: int, *, first_frame: float = 0.0) -> torch.Tensor:
    """`[B, ...]` with filler rows appended up to `rows`: zeros, except `first_frame` on frame 0 (a mask keeps one
    frame, so a filler row's attention has a key to attend to). Rows never mix, so fillers change no real row."""
    if x.size(0) == rows:
        return x
    filler = torch.zeros((rows - x.size(0), *x.shape[1:]), device=x.device, dtype=x.dtype)
    if first_frame:
        filler[..., :1] = first_frame
    return torch.cat([x, filler])


def padded_solve(
    solve: Solver,
    x: torch.Tensor,
    mask: torch.Tensor,
    mu: torch.Tensor,
    spks: torch.Tensor,
    cond: torch.Tensor,
    n_timesteps: int,
    bucket_frames: int,
    rows: int | None = None,
) -> torch.Tensor:
    """`solve` on inputs padded to the bucket (frames, and filler rows up to `rows`), cut back to the real ones:
    eager, the graphs' computation."""
    batch, frames = x.size(0), x.size(-1)
    rows = rows or batch
    length = bucket_length(frames, bucket_frames)
    x, mu, cond = (pad_rows(pad_frames(v, length), rows) for v in (x, mu, cond))
    mask = pad_rows(pad_frames(mask, length), rows, first_frame=1.0)
    out = solve(x, mask, mu, pad_rows(spks, rows), cond, n_timesteps)
    return out[:batch, :, :frames]


Key = tuple[int, int]  # a graph's (rows, frames)
GraphEntry = tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]

# A batch whose own graph is not captured yet runs on a larger captured one if that pads it to at most this many
# times its bucket's cost (rows x frames), else eagerly.
MAX_WASTE = 2.0
STAT_NAMES = ("captured_start", "captured_inline", "captured_background", "capture_failed", "replayed", "covering",
              "eager")  # fmt: skip


def covering_bucket(captured: Iterable[Key], needed: Key, max_waste: float = MAX_WASTE) -> Key | None:
    """The captured graph to run a batch of bucket `needed` on while that bucket's own graph is missing: one with at
    least its rows and frames (filler rows and right-padded frames change no real row or frame) whose padded cost
    (rows x frames) is at most `max_waste` times the needed one's; the cheapest such, None if there is none."""
    rows, frames = needed
    budget = max_waste * rows * frames
    fits = [key for key in captured if key[0] >= rows and key[1] >= frames and key[0] * key[1] <= budget]
    return min(fits, key=lambda key: (key[0] * key[1], key), default=None)


class CaptureQueue:
    """Buckets waiting for the background capturer, oldest first, each once: a bucket asked for again while it
    waits or is being captured is not queued again (a burst meets the same missing bucket batch after batch)."""

    def __init__(self) -> None:
        self._waiting: dict[Key, None] = {}  # insertion-ordered: oldest first
        self._busy: Key | None = None  # taken and not yet done
        self._closed = False
        self._changed = threading.Condition()

    def ask(self, key: Key) -> bool:
        """Queue `key`; False if it is waiting or being captured already, or the queue is closed."""
        with self._changed:
            if self._closed or key in self._waiting or key == self._busy:
                return False
            self._waiting[key] = None
            self._changed.notify_all()
            return True

    def take(self, timeout: float | None = None) -> Key | None:
        """The oldest waiting bucket, marked busy until `done`; waits for one. None once closed, or when `timeout`
        seconds passed with none."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._waiting) or self._closed, timeout)
            if self._closed or not self._waiting:
                return None
            key = next(iter(self._waiting))
            del self._waiting[key]
            self._busy = key
            return key

    def done(self, key: Key) -> None:
        """`key`'s capture ended (made or failed): it may be asked for again."""
        with self._changed:
            if self._busy == key:
                self._busy = None
            self._changed.notify_all()

    def close(self) -> None:
        """Drop what waits; `take` answers None from now on (the capturer ends after its current capture)."""
        with self._changed:
            self._closed = True
            self._waiting.clear()
            self._changed.notify_all()

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing waits and nothing is being captured; False if `timeout` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._waiting and self._busy is None, timeout)


class CFMGraphs:
    """CUDA graphs of `solve` (a fixed step count), one per (rows, frames) bucket, replayed.

    Batches of `rows` up to `max_rows` (the server vocodes concurrent requests together; its S3Gen worker raises
    it to its batch size) are padded to a `batch_bucket` with filler rows; frames to `bucket_frames` for one row
    and twice that for more (fewer, larger graphs).

    Start-up captures buckets synchronously (`capture_up_to`, `capture`). Afterwards a batch whose bucket is missing
    is served at once (a covering graph, else eagerly: see the module docstring) and the bucket is captured by a
    daemon thread of this object (started on the first miss), one bucket at a time, each asked for once
    (`CaptureQueue`), while `max_graphs` allow; a finished graph enters the dict under the lock, so a caller sees
    a bucket only complete. `background=False` captures on the caller's thread instead, as before (diagnosis,
    tests). `stats()` counts captures (start, background, inline, failed) and batches (replayed on a graph,
    covering: on a larger one, eager). Each capture is logged at INFO.

    Why capturing beside the S3Gen worker thread is safe:
    * Capture records, it does not execute: while it runs, the worker thread may replay other graphs of the same
      memory pool. The new graph may reuse pool blocks that other graphs use as scratch (as every graph captured
      into one pool does), which only needs their replays never to overlap: all replays run on the worker thread,
      one at a time, on its stream, and the new graph replays there too, only once published.
    * `capture_error_mode="thread_local"`: the worker thread's CUDA calls (allocations, syncs, replays) do not
      invalidate the capture; the caching allocator routes only allocations on the capturing stream into the
      graph's pool, so the worker's allocations stay in the ordinary pools.
    * The capture's eager warm-up run (kernels chosen, cuBLAS/cuDNN state of the capturing thread made, any Dynamo
      recompilation for the shape) runs outside the capture, on the capture stream, with the ordinary allocator.
    * torch.compile'd blocks called from two threads: Dynamo compiles under its global lock and each thread sets
      its own frame hook; grad mode is per thread, so the capturer enters inference mode as the worker runs (a
      different mode would fail Dynamo's guards and recompile).
    * The capture's inputs are the new entry's own buffers, made on the capture stream and synchronized before the
      entry is published: no request's tensor is read or written by the capturing thread.
    * One capture at a time (`_capture_lock`, also taken by start-up captures), on this object's own capture
      stream: the pool's blocks are reused only by captures on one stream, and torch's shared default capture
      stream is never used. The background path skips what `torch.cuda.graph` does on entry (a device-wide
      synchronize and `empty_cache`, which would stall the worker and evict its cached blocks).
    What it still costs the worker: the capturer's Python tracing (~1 s) shares the GIL, so the worker thread runs
    slower, not stopped, meanwhile; the warm-up run shares the GPU; and the allocator defers reclaiming blocks
    freed across streams until no capture is underway.
    """

    def __init__(self, solve: Solver, *, channels: int, n_timesteps: int, bucket_frames: int = 64,
                 max_graphs: int = 128, max_rows: int = 16, background: bool = True,
                 max_waste: float = MAX_WASTE) -> None:  # fmt: skip
        self.solve = solve
        self.channels = channels
        self.n_timesteps = n_timesteps
        self.bucket_frames = bucket_frames
        self.max_graphs = max_graphs
        self.max_rows = max_rows
        self.background = background
        self.max_waste = max_waste
        self._graphs: dict[Key, GraphEntry] = {}
        self._pool: Any = None  # CUDA's memory-pool handle, shared by every graph captured here
        self._lock = threading.Lock()  # the dict, the counts, and the graphs' buffers (shared by a bucket's callers)
        self._capture_lock = threading.Lock()  # one capture at a time, held for the whole capture (never `_lock`)
        self._stream: torch.cuda.Stream | None = None  # every capture's stream
        self._queue = CaptureQueue()
        self._capturer: threading.Thread | None = None
        self._target: tuple[torch.device, torch.dtype] | None = None  # the device and dtype batches come in
        self._failed: set[Key] = set()  # buckets whose background capture failed: not asked for again
        self._counts: Counter[str] = Counter()
        self.last_served: Key | None = None  # the graph the last batch replayed on (None: it ran eagerly)

    def frames_bucket(self, rows: int) -> int:
        return self.bucket_frames if rows == 1 else 2 * self.bucket_frames

    def shape_for(self, rows: int, frames: int) -> Key:
        """The (rows, frames) of the graph that serves a batch of this size."""
        padded_rows = batch_bucket(rows)
        return padded_rows, bucket_length(frames, self.frames_bucket(padded_rows))

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def buckets(self) -> list[Key]:
        """The (rows, frames) of the graphs captured so far."""
        with self._lock:
            return list(self._graphs)

    def stats(self) -> dict[str, int]:
        """Graphs held, captures by where they ran (start, inline, background, failed), batches by how they ran
        (replayed: on a graph, its own or a covering one; covering: on a larger one; eager), and buckets queued."""
        with self._lock:
            counts = {name: self._counts[name] for name in STAT_NAMES}
            graphs = len(self._graphs)
        return {"graphs": graphs, **counts, "queued": self._queue.waiting}

    def discard(self, key: Key) -> None:
        """Forget one graph (its replay gave what its eager computation does not): captured again when next asked."""
        with self._lock:
            self._graphs.pop(key, None)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the background capturer has nothing queued or running; False on timeout (tests, benchmarks)."""
        return self._queue.wait_idle(timeout)

    def close(self) -> None:
        """Stop background capturing: queued buckets are dropped, the thread ends after a capture it is in."""
        self._queue.close()

    def capture_up_to(self, max_frames: int, *, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
        """Capture every one-row bucket up to `max_frames` now (each takes ~1 s); returns how many were new. Graph
        inputs are fixed-shape buffers, so no real request is needed. Batches of several rows are captured in the
        background when first seen (or by `capture` at start)."""
        new = 0
        for length in range(self.bucket_frames, bucket_length(max_frames, self.bucket_frames) + 1, self.bucket_frames):
            new += self.capture(1, length, device=device, dtype=dtype)
        return new

    def capture(self, rows: int, frames: int, *, device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
        """Capture the bucket that serves `rows` x `frames` (`shape_for`) now, on this thread: for start-up, before
        any request. False if it was there already, or `max_graphs` are."""
        return self._capture_now(self.shape_for(rows, frames), torch.device(device), dtype, "start")

    def supports(self, x: torch.Tensor, n_timesteps: int) -> bool:
        return x.is_cuda and x.size(0) <= self.max_rows and n_timesteps == self.n_timesteps

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """`solve` of the batch: on its bucket's graph; while that is not captured, on a covering graph or eagerly,
        the bucket queued for the capturer (with `background=False`: captured here first, as before)."""
        batch, frames = x.size(0), x.size(-1)
        key = self.shape_for(batch, frames)
        if not self.background and key not in self._graphs:
            self._capture_now(key, x.device, x.dtype, "inline")
        with self._lock:
            use: Key | None = key if key in self._graphs else None
            if use is None and self.background:
                use = covering_bucket(self._graphs, key, self.max_waste)
            self.last_served = use
            if use is not None:
                self._counts["replayed"] += 1
                if use != key:
                    self._counts["covering"] += 1
                    self._request(key, x.device, x.dtype, f"on the {use[0]} x {use[1]} graph")
                return self._replay(self._graphs[use], x, mask, mu, spks, cond)
            self._counts["eager"] += 1
            if self.background:
                self._request(key, x.device, x.dtype, "eagerly")
        return padded_solve(self.solve, x, mask, mu, spks, cond, self.n_timesteps, self.frames_bucket(key[0]), key[0])

    def _replay(
        self, entry: GraphEntry, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """The batch through one graph (its own bucket's or a larger one; `_lock` held)."""
        batch, frames = x.size(0), x.size(-1)
        graph, inputs, output = entry
        for name, value in (("x", x), ("mask", mask), ("mu", mu), ("cond", cond)):
            buffer = inputs[name]
            buffer.zero_()
            buffer[:batch, :, :frames].copy_(value)
        inputs["mask"][batch:, :, :1] = 1  # filler rows: see pad_rows
        inputs["spks"].zero_()
        inputs["spks"][:batch].copy_(spks)
        graph.replay()
        return output[:batch, :, :frames].clone()

    # ------------------------------------------------------------------------------------------ capturing
    def _request(self, key: Key, device: torch.device, dtype: torch.dtype, served: str) -> None:
        """Ask the capturer thread for `key` (started on the first ask), unless it failed before or no room is left;
        the first ask is logged with how the batch ran meanwhile (`served`). `_lock` held."""
        if key in self._failed or len(self._graphs) >= self.max_graphs:
            return
        self._target = (device, dtype)
        if not self._queue.ask(key):
            return
        log.info("S3Gen CUDA graph for %d rows x %d frames missing: batch run %s, graph queued for background capture",
                 *key, served)  # fmt: skip
        if self._capturer is None:
            self._capturer = threading.Thread(target=self._capture_loop, name="cfm-graph-capture", daemon=True)
            self._capturer.start()

    def _capture_loop(self) -> None:
        """The capturer thread: the queue's buckets one at a time, until `close`."""
        while (key := self._queue.take()) is not None:
            try:
                target = self._target
                if target is not None:
                    with torch.inference_mode():
                        self._capture_now(key, *target, "background")
            except Exception as exc:  # noqa: BLE001 - a failed capture costs that bucket's graph, never the server
                with self._lock:
                    self._failed.add(key)
                    self._counts["capture_failed"] += 1
                log.warning("S3Gen's CUDA graph for %d rows x %d frames failed to capture in the background (%s: %s); "
                            "such batches run on a larger graph or eagerly", *key, type(exc).__name__, exc)  # fmt: skip
            finally:
                self._queue.done(key)

    def _capture_now(self, key: Key, device: torch.device, dtype: torch.dtype, source: str) -> bool:
        """Capture `key` on this thread and publish it; False if it is there already or the graphs are full.
        `source`: "start", "inline" (a request's, with `background=False`) or "background"."""
        with self._capture_lock:
            with self._lock:
                if key in self._graphs or len(self._graphs) >= self.max_graphs:
                    return False
            started = time.perf_counter()
            entry = self._record(*key, device, dtype, background=source == "background")
            with self._lock:
                self._graphs[key] = entry
                self._counts[f"captured_{source}"] += 1
        log.info("S3Gen CUDA graph captured: %d rows x %d frames in %.2f s (%s)", *key, time.perf_counter() - started,
                 source)  # fmt: skip
        return True

    def _record(
        self, rows: int, length: int, device: torch.device, dtype: torch.dtype, *, background: bool
    ) -> GraphEntry:
        """One graph of `solve` over fresh zero buffers of this shape, captured on the capture stream (`_capture_lock`
        held). See the class docstring for what `background` changes and why it is safe."""
        with torch.cuda.device(device):
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=device)
            stream = self._stream
            if not background:
                # as torch.cuda.graph does on entry: the caller's work done, cached blocks freed for the graph
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
            with torch.cuda.stream(stream):
                inputs = {
                    name: torch.zeros(rows, channels, length, device=device, dtype=dtype)
                    for name, channels in (("x", self.channels), ("mask", 1), ("mu", self.channels),
                                           ("cond", self.channels))
                }  # fmt: skip
                inputs["spks"] = torch.zeros(rows, self.channels, device=device, dtype=dtype)
                inputs["mask"][..., :1] = 1

                def run() -> torch.Tensor:
                    return self.solve(inputs["x"], inputs["mask"], inputs["mu"], inputs["spks"], inputs["cond"],
                                      self.n_timesteps)  # fmt: skip

                run()  # warm-up outside the graph (allocator, lazy kernels, this thread's library handles)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                # thread_local: the S3Gen worker (and T3, in the thread layout) launch work from other threads
                graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                try:
                    output = run()
                finally:
                    graph.capture_end()
                stream.synchronize()  # the buffers' fills done before any other stream uses them
        self._pool = graph.pool()
        return graph, inputs, output
