"""The flow-matching ODE (`ConditionalCFM`) replayed as CUDA graphs, one per padded length.

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

import torch

Solver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def bucket_length(frames: int, bucket_frames: int) -> int:
    return max(bucket_frames, math.ceil(frames / bucket_frames) * bucket_frames)


def pad_frames(x: torch.Tensor, length: int) -> torch.Tensor:
    """`[B, C, T]` zero-padded on the right to `length` frames."""
    return torch.nn.functional.pad(x, (0, length - x.size(-1)))


def padded_solve(
    solve: Solver,
    x: torch.Tensor,
    mask: torch.Tensor,
    mu: torch.Tensor,
    spks: torch.Tensor,
    cond: torch.Tensor,
    n_timesteps: int,
    bucket_frames: int,
) -> torch.Tensor:
    """`solve` on inputs padded to the bucket, cut back to the real frames (eager: the graphs' computation)."""
    frames = x.size(-1)
    length = bucket_length(frames, bucket_frames)
    out = solve(*(pad_frames(v, length) for v in (x, mask, mu)), spks, pad_frames(cond, length), n_timesteps)
    return out[..., :frames]


class CFMGraphs:
    """CUDA graphs of `solve` (batch 1, a fixed step count), captured lazily per bucket and replayed.

    One lock: a graph's input and output buffers are shared by every caller of that bucket.
    """

    def __init__(self, solve: Solver, *, channels: int, n_timesteps: int, bucket_frames: int = 64,
                 max_graphs: int = 64) -> None:  # fmt: skip
        self.solve = solve
        self.channels = channels
        self.n_timesteps = n_timesteps
        self.bucket_frames = bucket_frames
        self.max_graphs = max_graphs
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}
        self._pool = None
        self._lock = threading.Lock()

    def capture_up_to(self, max_frames: int, *, device: torch.device, dtype: torch.dtype = torch.float32) -> int:
        """Capture every bucket up to `max_frames` now (each takes ~1 s on first use otherwise); returns how many
        were new. Graph inputs are fixed-shape buffers, so no real request is needed."""
        like = torch.empty(0, device=device, dtype=dtype)
        new = 0
        for length in range(self.bucket_frames, bucket_length(max_frames, self.bucket_frames) + 1, self.bucket_frames):
            with self._lock:
                if length in self._graphs or len(self._graphs) >= self.max_graphs:
                    continue
                self._capture(length, like)
            new += 1
        return new

    def supports(self, x: torch.Tensor, n_timesteps: int) -> bool:
        return x.is_cuda and x.size(0) == 1 and n_timesteps == self.n_timesteps

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        frames = x.size(-1)
        length = bucket_length(frames, self.bucket_frames)
        with self._lock:
            entry = self._graphs.get(length)
            if entry is None:
                if len(self._graphs) >= self.max_graphs:
                    return padded_solve(self.solve, x, mask, mu, spks, cond, self.n_timesteps, self.bucket_frames)
                entry = self._capture(length, x)
            graph, inputs, output = entry
            for name, value in (("x", x), ("mask", mask), ("mu", mu), ("cond", cond)):
                buffer = inputs[name]
                buffer.zero_()
                buffer[..., :frames].copy_(value)
            inputs["spks"].copy_(spks)
            graph.replay()
            return output[..., :frames].clone()

    def _capture(
        self, length: int, like: torch.Tensor
    ) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        device, dtype = like.device, like.dtype
        inputs = {
            "x": torch.zeros(1, self.channels, length, device=device, dtype=dtype),
            "mask": torch.zeros(1, 1, length, device=device, dtype=dtype),
            "mu": torch.zeros(1, self.channels, length, device=device, dtype=dtype),
            "spks": torch.zeros(1, self.channels, device=device, dtype=dtype),
            "cond": torch.zeros(1, self.channels, length, device=device, dtype=dtype),
        }
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
        self._graphs[length] = entry
        return entry
