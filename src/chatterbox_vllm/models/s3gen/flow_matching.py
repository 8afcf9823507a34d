"""Conditional flow matching at inference (`flow.decoder`, CosyVoice 2's `CausalConditionalCFM`).

Starting from Gaussian noise z `[B, 80, T]`, integrate dx/dt = v(x, t) from t = 0 to 1 with fixed Euler steps on a
cosine grid (`t_k = 1 - cos(pi/2 * k/n)`: small steps near t = 0, large ones near 1). v is classifier-free
guided: the estimator runs on a batch of 2B rows, the conditional ones (x, mu, spks, cond) and the unconditional
ones (x, 0, 0, 0), and `v = (1 + r) v_cond - r v_uncond` with r = 0.7.

Mean flow (Turbo, Nano; the reference's `basic_euler`): the estimator predicts the average velocity over a whole
step [t, r] from both times, so a few plain Euler steps on a linear grid suffice (2 in the published model), on
the B rows as they are (the model was distilled from CFG outputs, so no guidance). Its initial noise is drawn in
two parts, see `draw_initial_noise`.

Between two Euler steps the loop can hand the thread to other work (`steps_yield_to`): the S3Gen worker runs a
long-form job's batch so, and serves the speech requests that arrive meanwhile between its steps instead of after
the whole batch (issue 22's fairness). Such a batch runs its steps eagerly (a CUDA graph of the loop cannot stop
in the middle), on the same padded shapes as its graph.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .cfm_graphs import CFMGraphs, padded_solve
from .config import CFMConfig
from .estimator import BasicTransformerBlock, CausalResnetBlock1D, ConditionalDecoder

log = logging.getLogger(__name__)

# What the flow runs between two Euler steps on this thread (a context variable: the worker that sets it is three
# calls above the loop, and other threads, such as the graph capturer, never see it).
_BETWEEN_STEPS: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "between_steps", default=None
)


FLOW_RECOMPILE_LIMIT = 32  # Dynamo compilations kept per block class (`compile_blocks`)


@contextlib.contextmanager
def steps_yield_to(hook: Callable[[], None] | None) -> Iterator[None]:
    """Flows solved on this thread inside the block call `hook` between their Euler steps (outside autocast), and
    solve eagerly on their graph's padded shapes; `None` restores whole-loop solving (for work run by the hook)."""
    token = _BETWEEN_STEPS.set(hook)
    try:
        yield
    finally:
        _BETWEEN_STEPS.reset(token)


def time_grid(n_timesteps: int, scheduler: str, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`[n + 1]` times from 0 to 1 (float32 op order as the reference: `1 - cos(s * 0.5 * pi)`)."""
    s = torch.linspace(0, 1, n_timesteps + 1, device=device, dtype=dtype)
    if scheduler == "cosine":
        s = 1 - torch.cos(s * 0.5 * math.pi)
    return s


def draw_initial_noise(
    shape: tuple[int, int, int] | torch.Size,
    *,
    meanflow: bool = False,
    generated_frames: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The flow's initial noise z `[B, 80, F]` (F frames: prompt and generated), drawn as the reference draws it.

    Original S3Gen: `randn_like(mu)`. Mean flow: the reference's `flow_inference` first draws `[1, 80, G]` for the
    G = 2 x tokens generated frames, then the decoder draws `randn_like(mu)` and overwrites its last G frames with
    that first draw (the same one in every row). Only the prompt's frames come from the second draw. Without
    `generated_frames` the mean-flow decoder draws as its reference class does alone (no `noised_mels`): one randn.
    """
    batch, channels, frames = shape
    if not meanflow or generated_frames is None:
        return torch.randn((batch, channels, frames), generator=generator, dtype=dtype, device=device)
    if not 0 <= generated_frames <= frames:
        raise ValueError(f"mean-flow noise needs 0 <= generated_frames <= {frames}, got {generated_frames}")
    tail = torch.randn((1, channels, generated_frames), generator=generator, dtype=dtype, device=device)
    z = torch.randn((batch, channels, frames), generator=generator, dtype=dtype, device=device)
    z[..., frames - generated_frames :] = tail
    return z


def estimator_rows(
    x: torch.Tensor,
    mask: torch.Tensor,
    mu: torch.Tensor,
    t: torch.Tensor,
    spks: torch.Tensor,
    cond: torch.Tensor,
    *,
    r: torch.Tensor | None = None,
    guided: bool = True,
) -> dict[str, torch.Tensor]:
    """The estimator's keyword inputs for one Euler step of B rows at time t `[1]` (step end r `[1]`, mean flow).

    guided (CFG): 2B rows, the conditional ones first, then the unconditional ones (mu, spks and cond zero), t
    expanded to `[2B]`, as the reference lays them out. Mean flow: the B rows as they are, t and r `[1]` (the
    reference's shapes; the time embedding broadcasts over the rows).
    """
    if not guided:
        if r is None:
            raise ValueError("a mean-flow step needs its end time r")
        return {"x": x, "mask": mask, "mu": mu, "t": t, "spks": spks, "cond": cond, "r": r}
    b = x.size(0)
    return {
        "x": torch.cat([x, x], dim=0),
        "mask": torch.cat([mask, mask], dim=0),
        "mu": torch.cat([mu, torch.zeros_like(mu)], dim=0),
        "t": t.expand(2 * b).contiguous(),
        "spks": torch.cat([spks, torch.zeros_like(spks)], dim=0),
        "cond": torch.cat([cond, torch.zeros_like(cond)], dim=0),
    }


def guided_velocity(out: torch.Tensor, rows: int, rate: float) -> torch.Tensor:
    """CFG: `(1 + rate) v_cond - rate v_uncond` from the estimator's 2B-row output."""
    v_cond, v_uncond = out[:rows], out[rows:]
    return (1.0 + rate) * v_cond - rate * v_uncond


class ConditionalCFM(nn.Module):
    def __init__(self, config: CFMConfig = CFMConfig(), meanflow: bool = False):
        super().__init__()
        self.config = config
        self.meanflow = meanflow  # mean-flow solver (the reference's basic_euler): see the module docstring
        self.estimator = ConditionalDecoder(config.estimator, meanflow=meanflow)
        self.graphs: CFMGraphs | None = None  # CUDA graphs of the loop, when enabled
        # float16 / bfloat16: the estimator's matrix products and convolutions under autocast (the ODE state stays
        # float32); None: the weights' dtype throughout (the reference's float32).
        self.compute_dtype: torch.dtype | None = None
        self.compiled = False  # see compile_blocks

    def velocity(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        r: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Velocity `[B, 80, T]` of the step from t `[1]` (to r `[1]`, mean flow), and the estimator inputs it was
        made from (2B CFG rows, or the B rows as they are for mean flow)."""
        inputs = estimator_rows(x, mask, mu, t, spks, cond, r=r, guided=not self.meanflow)
        out = self.estimator(**inputs)
        if self.meanflow:
            return out, inputs
        return guided_velocity(out, x.size(0), self.config.inference_cfg_rate), inputs

    @property
    def scheduler(self) -> str:
        """The time grid: mean flow always steps linearly (the reference ignores its cosine setting there)."""
        return "linear" if self.meanflow else self.config.t_scheduler

    @torch.inference_mode()
    def forward(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int = 10,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        generated_frames: int | None = None,
    ) -> torch.Tensor:
        """Generated mel `[B, 80, T]` for encoder output mu `[B, 80, T]` (all frames, prompt included).

        The initial noise is `noise` if given, else drawn by `draw_initial_noise` from `generator` (the global RNG
        when None, which is the reference's `torch.randn_like(mu)`); mean flow draws the last `generated_frames`
        frames (those of the tokens to speak) first, as the reference's S3Gen does. The reference has a `temperature`
        that multiplies z only in an unused code path; here z is always unit Gaussian, as in its inference.
        """
        if noise is None:
            noise = draw_initial_noise(
                mu.shape, meanflow=self.meanflow, generated_frames=generated_frames, generator=generator,
                dtype=mu.dtype, device=generator.device if generator is not None else mu.device,
            )  # fmt: skip
        in_dtype = noise.dtype
        dtype = self.estimator.dtype
        x = noise.to(device=mu.device, dtype=dtype)
        mu, mask, spks, cond = (v.to(dtype) for v in (mu, mask, spks, cond))
        out, served = self._integrate(x, mask, mu, spks, cond, n_timesteps)
        if self.compute_dtype is not None and not bool(out.isfinite().all()):
            out = self._redo_non_finite(x, mask, mu, spks, cond, n_timesteps, served)
        return out.to(in_dtype)

    def _redo_non_finite(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
        n_timesteps: int, served: str | tuple[int, int],
    ) -> torch.Tensor:  # fmt: skip
        """A half-precision batch whose mel is not finite (`served`: the graph it ran on, or how it ran), solved
        again eagerly in half precision first. Finite there, the graph it ran on is dropped (recaptured when next
        needed) and half precision stays; not finite there either, the flow leaves half precision for good
        (`_leave_half_precision`). Seen on an H200 (2026-12-03): one such batch switched a server to float32 for
        good, its S3Gen then ~7x slower."""
        graph = served if isinstance(served, tuple) else None
        out = self.solve(x, mask, mu, spks, cond, n_timesteps)
        finite = bool(out.isfinite().all())
        log.warning(
            "S3Gen's flow gave non-finite values in %s (%s, %d rows x %d frames); solved eagerly again: %s",
            self.compute_dtype, f"the {graph[0]} x {graph[1]} graph" if graph else f"{served} run",
            x.size(0), x.size(-1), "finite, so that graph is captured again" if finite else "not finite either",
        )  # fmt: skip
        if finite:
            if graph is not None and self.graphs is not None:
                self.graphs.discard(graph)
            return out
        self._leave_half_precision()
        return self._integrate(x, mask, mu, spks, cond, n_timesteps)[0]

    def _integrate(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
        n_timesteps: int,
    ) -> tuple[torch.Tensor, str | tuple[int, int]]:  # fmt: skip
        """The mel, and how it was solved: the (rows, frames) of the graph it ran on, else "eager" or "step by
        step" (read at once: work run between steps may use the graphs meanwhile)."""
        hook = _BETWEEN_STEPS.get()
        if hook is not None:
            return self._solve_yielding(x, mask, mu, spks, cond, n_timesteps, hook), "step-by-step"
        if self.graphs is not None and self.graphs.supports(x, n_timesteps):
            out = self.graphs(x, mask, mu, spks, cond)
            return out, self.graphs.last_served or "eager"
        return self.solve(x, mask, mu, spks, cond, n_timesteps), "eager"

    def _solve_yielding(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
        n_timesteps: int, hook: Callable[[], None],
    ) -> torch.Tensor:  # fmt: skip
        """`solve` with `hook` between steps; where a graph would serve the batch, padded to that graph's shape, so
        the kernels (and results) are the ones its replay runs."""
        solve = functools.partial(self.solve, between_steps=hook)
        if self.graphs is not None and self.graphs.supports(x, n_timesteps):
            rows, _ = self.graphs.shape_for(x.size(0), x.size(-1))
            return padded_solve(solve, x, mask, mu, spks, cond, n_timesteps, self.graphs.frames_bucket(rows), rows)
        return solve(x, mask, mu, spks, cond, n_timesteps)

    def _leave_half_precision(self) -> None:
        """float16 saturates at 65504. Should some voice or text push the estimator past it, the mel turns inf/NaN:
        from then on the flow computes in float32 (graphs recaptured as shapes come), instead of answering noise."""
        log.warning(
            "S3Gen's flow overflowed in %s; computing in float32 from now on (set CHATTERBOX_S3GEN_DTYPE=float32 "
            "to start that way)", self.compute_dtype,
        )  # fmt: skip
        self.compute_dtype = None
        self._drop_graphs()

    def solve(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
        n_timesteps: int, between_steps: Callable[[], None] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The Euler loop from noise x (the estimator's dtype, or `compute_dtype` under autocast): CFG steps on the
        configured grid, or mean-flow steps over [t, t_next] on a linear one. `between_steps` runs between two
        steps, outside autocast (one autocast region per step then: the same casts, made again each step)."""
        times = time_grid(n_timesteps, self.scheduler, device=mu.device, dtype=mu.dtype).to(x.dtype)
        if between_steps is None:
            with self._autocast(x):
                return self._steps(x, mask, mu, spks, cond, times, range(n_timesteps))
        for k in range(n_timesteps):
            if k:
                between_steps()
            with self._autocast(x):
                x = self._steps(x, mask, mu, spks, cond, times, range(k, k + 1))
        return x

    def _autocast(self, x: torch.Tensor) -> torch.autocast:
        """The estimator's half-precision region (`compute_dtype`; disabled when None)."""
        half = self.compute_dtype
        return torch.autocast(x.device.type, dtype=half or x.dtype, enabled=half is not None)

    def _steps(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
        times: torch.Tensor, steps: range,
    ) -> torch.Tensor:  # fmt: skip
        """Euler steps `steps` (indices into the time grid `times`) from x."""
        for k in steps:
            t, t_next = times[k : k + 1], times[k + 1 : k + 2]
            v, _ = self.velocity(x, mask, mu, t, spks, cond, r=t_next if self.meanflow else None)
            x = x + (t_next - t) * v.to(x.dtype)
        return x

    def compile_blocks(self) -> None:
        """Run the estimator's resnet and transformer blocks through torch.compile (Inductor) from now on.

        One Euler step of the full-size estimator is ~1,770 operators (counted on the CPU: 352 linear, 141 layer
        norms, 141 adds, 96 muls, ...), on the GPU as many small kernels around skinny matrix products; Inductor
        fuses the elementwise ones inside each block.
        Compiled per block ("regional compilation"): the 56 transformer blocks share one compiled graph, as do the
        resnet blocks of one width, so compiling takes ~20 s on a 2-core CPU for the full-size model (the whole
        Euler step as one graph took ~45 s for the tiny one). Shapes are dynamic: one compilation serves every
        (rows, frames) bucket. CUDA-graph capture (`CFMGraphs`) records the compiled kernels as it records eager
        ones; the server compiles at start-up.
        """
        for module in self._compilable_blocks():
            module.compile(dynamic=True)
        # Each block class's forward is one code object: widths, the row count 1 (specialized) and the flow's
        # shapes each take a compilation of it; past Dynamo's default of 8 the block would run uncompiled from then
        # on (seen on an H200 once long-form jobs' step-by-step batches brought their shapes).
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), FLOW_RECOMPILE_LIMIT))
        self.compiled = True

    def uncompile_blocks(self) -> None:
        """Back to eager blocks (where Inductor cannot build its kernels, e.g. no C compiler for Triton's launcher).
        `nn.Module.compile` keeps the compiled call in `_compiled_call_impl`; without it the module runs eagerly."""
        for module in self._compilable_blocks():
            module._compiled_call_impl = None
        self.compiled = False
        self._drop_graphs()

    def _drop_graphs(self) -> None:
        """Forget the graphs captured so far (they replay the kernels of before); each shape is captured again as it
        comes, with the same step count and buckets."""
        if self.graphs is not None:
            graphs = self.graphs
            self.enable_cuda_graphs(graphs.n_timesteps, graphs.bucket_frames, graphs.max_rows,
                                    background=graphs.background)  # fmt: skip

    def _compilable_blocks(self) -> list[nn.Module]:
        return [m for m in self.estimator.modules() if isinstance(m, (BasicTransformerBlock, CausalResnetBlock1D))]

    def enable_cuda_graphs(
        self, n_timesteps: int, bucket_frames: int = 64, max_rows: int = 16, *, background: bool = True
    ) -> None:
        """Replay the loop as CUDA graphs from now on (`n_timesteps` steps, up to `max_rows` rows, CUDA); see
        `cfm_graphs`. Graphs enabled before are closed (their background capturer stops). `background=False`: a
        missing bucket is captured on the caller's thread (a benchmark that synchronizes the whole device, which a
        capture on another thread does not allow)."""
        if self.graphs is not None:
            self.graphs.close()
        self.graphs = CFMGraphs(
            self.solve, channels=self.estimator.config.out_channels, n_timesteps=n_timesteps,
            bucket_frames=bucket_frames, max_rows=max_rows, background=background,
        )  # fmt: skip
