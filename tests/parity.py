"""The one metric of every parity test (ours against the reference's golden tensors), and its pytest plugin.

A float32 result is only defined up to rounding, and rounding depends on the order of additions: the blocking of a
matrix product, the SIMD width of the CPU, the number of threads. So a parity check may not compare values one by
one against themselves (a value near zero has no relative precision of its own); it compares the error with the
scale of the tensor it lives in:

    error = max |ours - ref| / scale(ref)        scale = rms of ref (or max |ref|, per Stage)

taken over the whole tensor, or over each row where `Stage.rows` names dimensions whose rows differ in scale by
orders of magnitude (the frames of a spectrum). Log-domain spectra are compared after undoing the log (see
`power_of_log`), where that scale is the one the rounding happened at.

The error must stay under the stage's bound, in units of float32's machine epsilon (eps = 2**-23):

    bound = K * eps * sqrt(n / 8) * gain          (K = 4, for every stage)

* n: the rounded additions behind one value along its deepest path: the inner length of each matrix product,
  convolution (kernel x input channels), normalisation or Fourier transform, summed over the layers (or solver
  steps) chained on the way. Independent rounding errors add like a random walk; x86 float32 sums run in 8 SIMD
  accumulators (AVX2; 16 with AVX-512), each a walk of n/8 steps, so one standard deviation is about
  eps * sqrt(n / 8) of the result's scale, and K = 4 of them is the bound.
* gain: a documented amplification after the sums: classifier-free guidance's extrapolation, a softmax's slope
  over a temperature, the exponential that turns log-magnitudes into magnitudes, the Euler steps' weights.

The numbers, per stage, and the reason for each are in STAGES below; README.md's Testing section shows each bound
beside the largest error measured with 1 and with 2 torch threads. Mutation tests (one weight scaled by 1 + 1e-3,
a normalisation epsilon, a swapped activation, a wrong window) sit beside the checks and assert they fail.

Integer outputs (tokens, lengths, masks) and values that are copies are compared exactly, not with this metric.

As a plugin (`pytest_plugins` in tests/conftest.py) it also:
* sets torch's (and the BLAS libraries') thread count from `CHATTERBOX_TEST_TORCH_THREADS`, so the suite can show
  that the checks hold whatever the host's parallelism;
* with `--parity-metrics PATH`, writes the largest error of every stage (and every mutant's) to a JSON file.
`python tests/parity.py table A.json B.json ...` prints the markdown table the README's Testing section holds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

EPS32 = float(torch.finfo(torch.float32).eps)
# One constant for every stage: the bound is K standard deviations of the random-walk rounding error.
K = 4.0
# Float32 sums on x86 run in SIMD accumulators: 8 lanes with AVX2 (16 with AVX-512), each summing 1/8 of the terms.
LANES = 8
# Rows this far under the tensor's own scale are judged against the tensor's scale times this factor instead
# (a silent frame's rounding error is at the level of its neighbours, not of its own near-zero values).
ROW_FLOOR = 2.0**-10

THREADS_ENV = "CHATTERBOX_TEST_TORCH_THREADS"


@dataclass(frozen=True)
class Stage:
    """A family of compared tensors with the same float32 error budget."""

    n: int  # rounded additions behind one value, along its deepest path
    why: str  # where n and the gain come from
    gain: float = 1.0
    scale: Literal["rms", "max"] = "rms"
    rows: tuple[int, ...] = ()  # dims that index independently scaled rows

    @property
    def bound(self) -> float:
        return K * EPS32 * math.sqrt(max(self.n / LANES, 1.0)) * self.gain


# The deepest paths, counted once per chained reduction (parallel branches once). Weight-normed convolutions count
# twice: their weight g * v / |v| is recomputed, norm and all, on every call.
_ESTIMATOR_N = 12_000 + 12 * 13_200 + 14_000 + 1_000  # down stage, 12 mid stages, up stage, final block (below)
_ENCODER_N = 58_000
_HIFT_N = 2 * ((2 * 512 + 6 * 11 * 256) + (2 * 256 + 6 * 11 * 128) + (2 * 128 + 6 * 11 * 64) + 7 * 80 + 7 * 64)
_T3_LAYER_N = 1024 + 64 + 100 + 1024 + 1024 + 4096 + 2 * 1024
_T3_LOGITS_N = 30 * _T3_LAYER_N + 2 * 1024
_GPT2_TINY_N = 2 * (64 + 64 + 32 + 395 + 64 + 64 + 64 + 256) + 64 + 64

# fmt: off
STAGES: dict[str, Stage] = {
    # ---------------------------------------------------------------------------------------------- audio front ends
    "audio.soxr_16k": Stage(
        n=1024, why="soxr's HQ resampler: a float32 FIR filter of the order of 10^3 taps per output sample"),
    "ve.mel": Stage(
        n=400 + 201, gain=2.0, rows=(0,),
        why="400-point FFT, squared (the power doubles its relative error), 201-bin mel sum; per frame"),
    "ve.embedding": Stage(
        n=(40 + 256) + 2 * (256 + 256) + 3 * 256,
        why="3 LSTM layers (input 40 / 256 + recurrent 256 per gate), projection 256, two L2 norms over 256; "
            "the forget gates let earlier steps fade instead of adding up"),
    "s3tok.log_mel": Stage(
        n=400 + 201, gain=6.0, rows=(-1,),
        why="400-point FFT, squared, 201-bin mel sum; compared as power (10^(4y - 4)), per frame. The gain: log10 "
            "comes from the CPU's vector math library, whose AVX2 and AVX-512 versions differ by an ulp; undone to "
            "power, one ulp of y (|y| < 2) is ln(10) x 4 x 2 eps ~ 18 eps of its bin, and a frame's loudest bin "
            "stands up to ~sqrt(128) x its rms (measured: 0 eps on an AVX2 EPYC, 100 on an AVX-512 Xeon)"),
    "s3gen.mel_24k": Stage(
        n=1920 + 961, rows=(-1,),
        why="1920-point FFT magnitude, 961-bin mel sum; compared as magnitude (e^y), per frame"),
    "campplus.embedding": Stage(
        n=60_000,
        why="512-point fbank FFT, 2-D conv head (~2.3k), then 52 densely connected TDNN layers in a row (1x1 conv "
            "over up to 1024 channels + 3 taps x 128), 3 transitions, statistics pooling, dense 1024"),
    # ---------------------------------------------------------------------------------------------- S3Gen flow
    "s3gen.encoder": Stage(
        n=_ENCODER_N,
        why="input Linear, lookahead and upsampling convs, 10 Conformer blocks (LayerNorms 512, q/k/v/out 512, "
            "scores 64, weights over ~412 frames, feed-forward 512 then 2048); mu adds the 512 -> 80 projection"),
    "s3gen.spks": Stage(n=2 * 192, why="L2 normalisation of the x-vector (192), then a Linear 192 -> 80"),
    "s3gen.estimator": Stage(
        n=_ESTIMATOR_N,
        why="U-Net of 14 stages, each a resnet (two 3-tap convs over 256-512 channels, LayerNorms) and 4 "
            "transformer blocks (LayerNorm, q/k/v 256, scores 64, weights over ~412 frames, feed-forward 256/1024)"),
    "s3gen.mel": Stage(
        n=_ESTIMATOR_N + _ENCODER_N, gain=(1.7 + 0.7) * 0.351,
        why="mel = z + sum_k dt_k v_k over 10 cosine-spaced steps: independent rounding of the estimator calls adds "
            "to sqrt(sum dt_k^2) = 0.351 of one call's; CFG's 1.7 / -0.7 weights add 2.4; mu comes from the encoder"),
    "s3gen.mel_meanflow": Stage(
        n=_ESTIMATOR_N + _ENCODER_N, gain=math.sqrt(2 * 0.5**2),
        why="mean flow: two Euler steps of dt = 1/2 without guidance: sqrt(2 x 0.25) of one estimator call"),
    # ---------------------------------------------------------------------------------------------- HiFT
    "hift.f0": Stage(
        n=2 * (3 * 80 + 4 * 3 * 512) + 512,
        why="5 weight-normed 3-tap convolutions (80, then 512 channels) and a Linear 512"),
    "hift.source": Stage(
        n=47_520, why="the sine phase is a running sum over every one of the 47 520 samples"),
    "hift.conv_post": Stage(
        n=_HIFT_N, gain=4.0,
        why="conv_pre, then per upsampling stage a transposed conv (2 taps x 512/256/128) and 6 dilated convs "
            "(11 taps x 256/128/64), conv_post; all weight-normed. Gain 4: Snake's slope 1 + sin(2ax) reaches 2 "
            "and nothing renormalises, so errors grow through the residual stack (observed ~4x the sums' estimate)"),
    "hift.istft": Stage(
        n=4 * 16, gain=150.0,
        why="16-point inverse FFT over 4 overlapping frames, of magnitudes up to 100 (the clip) for a waveform of "
            "rms ~0.67: rounding happens at the loudest bin's scale"),
    "hift.wav": Stage(
        n=_HIFT_N, gain=4.0 * 14.0,
        why="conv_post's error through exp(): its absolute error (rms 1.8 x relative) is the magnitudes' relative "
            "error, and magnitudes (rms 3.6) over the waveform (rms 0.48) weigh 7.6: x14 over conv_post. Also the "
            "end-to-end S3Gen waveform (the flow's mel error is far below HiFT's own)"),
    "rng.draws": Stage(
        n=1, why="the same generator stream; vectorised Box-Muller (log, sin, cos) may round an ulp apart per CPU"),
    # ---------------------------------------------------------------------------------------------- T3
    "t3.cond_emb": Stage(
        n=2 * (1024 + 1024 + 256 + 150 + 1024),
        why="perceiver: two attention blocks (LayerNorm 1024, q/k/v 1024, scores 256, weights over 150 prompt "
            "tokens, output 1024); the speaker Linear (256) is shorter; embedding rows add exactly"),
    "t3.hidden": Stage(
        n=30 * _T3_LAYER_N + 1024,
        why="30 Llama layers: RMSNorms (1024), q/k/v 1024, scores 64, weights over <= 100 positions, o 1024, "
            "gate/up 1024, down 4096; the final RMSNorm"),
    "t3.logits": Stage(n=_T3_LOGITS_N, why="the final hidden state, then the speech head (1024)"),
    "t3.logits_cfg": Stage(
        n=_T3_LOGITS_N, gain=2.0, why="cond + 0.5 (cond - uncond): the two rows' errors weigh 1.5 + 0.5"),
    "t3.probs": Stage(
        n=_T3_LOGITS_N, gain=2.0 * 2.0 / 0.8, scale="max",
        why="softmax of CFG logits / 0.8: a probability moves by at most 2 p_max times the logit error / "
            "temperature (the logits' rms is ~1); CFG x2"),
    "t3.probs_from_ref_logits": Stage(
        n=8194, gain=1 / 0.8, scale="max",
        why="the sampling chain alone on the reference's logits: softmax's sum over 8194 tokens, / temperature"),
    "t3_gpt2.cond_emb": Stage(
        n=256, why="tiny GPT-2 T3: the speaker Linear (256); prompt and text embeddings are exact lookups"),
    "t3_gpt2.logits": Stage(
        n=_GPT2_TINY_N,
        why="tiny GPT-2 T3, 2 layers: LayerNorms 64, c_attn 64, scores 32, weights over ~395 positions, c_proj 64, "
            "MLP 64 then 256; final LayerNorm and head 64"),
    "t3_gpt2.probs": Stage(
        n=_GPT2_TINY_N, gain=2.0 / 0.8, scale="max",
        why="softmax of logits / 0.8 (no CFG): 2 p_max x the logit error / temperature"),
}
# fmt: on


def _scale(ref: torch.Tensor, stage: Stage) -> torch.Tensor:
    """The scale each element is judged at (broadcastable to ref)."""

    def over(dims: tuple[int, ...]) -> torch.Tensor:
        if stage.scale == "max":
            return ref.abs().amax(dim=dims, keepdim=True)
        return ref.pow(2).mean(dim=dims, keepdim=True).sqrt()

    whole = over(tuple(range(ref.dim())))
    if not stage.rows:
        return whole
    rows = {d % ref.dim() for d in stage.rows}
    per_row = over(tuple(d for d in range(ref.dim()) if d not in rows))
    return torch.maximum(per_row, whole * ROW_FLOOR)


def parity_error(ours: torch.Tensor, ref: torch.Tensor, stage: Stage) -> float:
    """max |ours - ref| / scale(ref), in float64 (shapes must match; the scale must not be zero)."""
    ours, ref = torch.as_tensor(ours).double(), torch.as_tensor(ref).double()
    assert tuple(ours.shape) == tuple(ref.shape), f"shapes differ: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    scale = _scale(ref, stage)
    assert bool((scale > 0).all()), "the reference tensor is all zeros: compare it exactly instead"
    return float(((ours - ref).abs() / scale).max())


def power_of_log(log_values: torch.Tensor, *, base: float = math.e, scale: float = 1.0, offset: float = 0.0):
    """Undo `y = (log_base(x) + offset) / scale` in float64: the linear quantity a log-spectrum was computed from.

    Compared in the log domain, a near-silent bin's rounding error (absolute, at the scale of its frame) becomes a
    large log difference; compared linearly against its frame, it is the error float32 made."""
    y = torch.as_tensor(log_values).double()
    return torch.pow(torch.tensor(base, dtype=torch.float64), y * scale - offset)


# ------------------------------------------------------------------------------------------------ checks, records
MEASURED: dict[str, dict[str, float]] = {}  # stage -> case -> largest error seen
MUTANTS: dict[str, float] = {}  # mutant -> its error / its stage's bound


def check(stage_name: str, ours: torch.Tensor, ref: torch.Tensor, *, case: str = "") -> float:
    """Assert that `ours` matches `ref` within the stage's bound; record the error; return it."""
    stage = STAGES[stage_name]
    err = parity_error(ours, ref, stage)
    cases = MEASURED.setdefault(stage_name, {})
    cases[case] = max(err, cases.get(case, 0.0))
    assert err <= stage.bound, (
        f"{stage_name}{f' [{case}]' if case else ''}: error {err:.3g} ({err / EPS32:.0f} eps) "
        f"> bound {stage.bound:.3g} ({stage.bound / EPS32:.0f} eps)"
    )
    return err


def assert_caught(stage_name: str, ours: torch.Tensor, ref: torch.Tensor, *, mutant: str) -> float:
    """Assert that the stage's check FAILS on a deliberately wrong `ours` (a mutant); record by how much."""
    stage = STAGES[stage_name]
    err = parity_error(ours, ref, stage)
    MUTANTS[mutant] = err / stage.bound
    assert err > stage.bound, (
        f"mutant {mutant!r} passes the {stage_name} check: error {err:.3g} <= bound {stage.bound:.3g}"
    )
    return err


@contextlib.contextmanager
def perturbed(module: torch.nn.Module, name: str, relative: float = 1e-3) -> Iterator[None]:
    """Scale one parameter or buffer of `module` (dotted name) by 1 + relative in place; restore it after."""
    tensor = module.get_parameter(name) if name in dict(module.named_parameters()) else module.get_buffer(name)
    saved = tensor.detach().clone()
    with torch.no_grad():
        tensor.mul_(1.0 + relative)
    try:
        yield
    finally:
        with torch.no_grad():
            tensor.copy_(saved)


# ------------------------------------------------------------------------------------------------ pytest plugin
def pytest_addoption(parser) -> None:
    parser.addoption(
        "--parity-metrics", metavar="PATH", default=None,
        help="write the largest error of every parity stage (and mutant) to this JSON file",
    )  # fmt: skip


def pytest_configure(config) -> None:
    threads = os.environ.get(THREADS_ENV)
    if threads:
        set_threads(int(threads))


def set_threads(n: int) -> None:
    """torch's intra-op threads and the BLAS/OpenMP pools numpy and librosa use."""
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy then keeps its default pool; torch is what the parity stages run on
        return
    threadpool_limits(n)


def metrics_document() -> dict:
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "K": K,
        "stages": {
            name: {
                "bound": STAGES[name].bound,
                "bound_eps": STAGES[name].bound / EPS32,
                "max": max(cases.values()),
                "max_eps": max(cases.values()) / EPS32,
                "cases": cases,
            }
            for name, cases in sorted(MEASURED.items())
        },
        "mutants_error_over_bound": dict(sorted(MUTANTS.items())),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def pytest_sessionfinish(session) -> None:
    path = session.config.getoption("--parity-metrics")
    if path and (MEASURED or MUTANTS):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(metrics_document(), indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ the docs table
def markdown_table(documents: list[dict]) -> str:
    """Stage | bound | largest error per document (e.g. 1 and 2 threads), all in units of eps."""
    heads = [f"{d['torch_threads']} thread{'s' if d['torch_threads'] != 1 else ''}" for d in documents]
    lines = [
        "| stage | bound (eps) | " + " | ".join(heads) + " |",
        "|---|---:|" + "---:|" * len(documents),
    ]
    for name, stage in STAGES.items():
        values = [d["stages"].get(name, {}).get("max_eps") for d in documents]
        cells = ["–" if v is None else f"{v:.1f}" for v in values]
        lines.append(f"| `{name}` | {stage.bound / EPS32:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "table":
        sys.exit("usage: python tests/parity.py table METRICS.json [METRICS.json ...]")
    print(markdown_table([json.loads(Path(p).read_text()) for p in sys.argv[2:]]))
