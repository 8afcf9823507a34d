"""The flow-matching ODE (`ConditionalCFM`) replayed as CUDA graphs, one per padded batch shape.

Profiled on an H100 (benchmarks/s3gen_profile.py): one Euler step of the estimator on a sentence (2 x ~460 frames)
took ~30 ms, almost all of it Python and kernel-launch overhead of its ~60 transformer and resnet blocks, so
S3Gen, not T3, bounded first audio and throughput. A CUDA graph of the whole n-step loop launches it once.

Graphs need fixed shapes, so frames are padded on the right to a multiple of `bucket_frames`, with mask, mu and
cond zero there. That leaves the real frames' result unchanged: the estimator's convolutions are causal (a
padded frame never feeds an earlier one), its attention masks padded keys out, its norms are per frame, and every
block multiplies by the mask. `padded_solve` is that computation, eager; tests check it against the unpadded one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch

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


GraphEntry = tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]


class CFMGraphs:
    """CUDA graphs of `solve` (a fixed step count), captured lazily per (rows, frames) bucket and replayed.

    Batches of `rows` up to `max_rows` (the server vocodes concurrent requests together; its S3Gen worker raises
    it to its batch size) are padded to a `batch_bucket` with filler rows; frames to `bucket_frames` for one row
    and twice that for more (fewer, larger graphs).
    One lock: a graph's input and output buffers are shared by every caller of that bucket.
    """

    def __init__(self, solve: Solver, *, channels: int, n_timesteps: int, bucket_frames: int = 64,
                 max_graphs: int = 128, max_rows: int = 16) -> None:  # fmt: skip
        self.solve = solve
        self.channels = channels
        self.n_timesteps = n_timesteps
        self.bucket_frames = bucket_frames
        self.max_graphs = max_graphs
        self.max_rows = max_rows
        self._graphs: dict[tuple[int, int], GraphEntry] = {}
        self._pool: Any = None  # CUDA's memory-pool handle, shared by every graph captured here
        self._lock = threading.Lock()

    def frames_bucket(self, rows: int) -> int:
        return self.bucket_frames if rows == 1 else 2 * self.bucket_frames

    def shape_for(self, rows: int, frames: int) -> tuple[int, int]:
        """The (rows, frames) of the graph that serves a batch of this size."""
        padded_rows = batch_bucket(rows)
        return padded_rows, bucket_length(frames, self.frames_bucket(padded_rows))

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def capture_up_to(self, max_frames: int, *, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
        """Capture every one-row bucket up to `max_frames` now (each takes ~1 s on first use otherwise); returns how
        many were new. Graph inputs are fixed-shape buffers, so no real request is needed. Batches of several rows
        are captured when first seen."""
        like = torch.empty(0, device=device, dtype=dtype)
        new = 0
        for length in range(self.bucket_frames, bucket_length(max_frames, self.bucket_frames) + 1, self.bucket_frames):
            with self._lock:
                if (1, length) in self._graphs or len(self._graphs) >= self.max_graphs:
                    continue
                self._capture(1, length, like)
            new += 1
        return new

    def supports(self, x: torch.Tensor, n_timesteps: int) -> bool:
        return x.is_cuda and x.size(0) <= self.max_rows and n_timesteps == self.n_timesteps

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        batch, frames = x.size(0), x.size(-1)
        key = self.shape_for(batch, frames)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                if len(self._graphs) >= self.max_graphs:
                    return padded_solve(self.solve, x, mask, mu, spks, cond, self.n_timesteps,
                                        self.frames_bucket(key[0]), key[0])  # fmt: skip
                entry = self._capture(*key, x)
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

    def _capture(self, rows: int, length: int, like: torch.Tensor) -> GraphEntry:
        device, dtype = like.device, like.dtype
        inputs = {
            name: torch.zeros(rows, channels, length, device=device, dtype=dtype)
            for name, channels in (("x", self.channels), ("mask", 1), ("mu", self.channels), ("cond", self.channels))
        }
        inputs["spks"] = torch.zeros(rows, self.channels, device=device, dtype=dtype)
        inputs["mask"][..., :1] = 1

        def run() -> torch.Tensor:
            return self.solve(inputs["x"], inputs["mask"], inputs["mu"], inputs["spks"], inputs["cond"],
                              self.n_timesteps)  # fmt: skip

        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()  # warm-up outside the graph (allocator, lazy kernels), as capture requires
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: T3 (vLLM) may be launching work from other threads of this process meanwhile
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = run()
        self._pool = graph.pool()
        entry = (graph, inputs, output)
        self._graphs[(rows, length)] = entry
        return entry
