"""The flow-matching loop padded to a CUDA-graph bucket gives the unpadded result on the real frames.

CUDA graphs themselves need a GPU (benchmarks measure them there); the computation they replay is `padded_solve`,
checked here on the full-size seed-0 S3Gen, whose estimator has the real block structure.
"""

from __future__ import annotations

import pytest
import torch

from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.s3gen.cfm_graphs import CFMGraphs, batch_bucket, bucket_length, padded_solve
from flow_utils import flow_inputs


@pytest.fixture(scope="module")
def s3gen(english_full_checkpoint):
    return load_s3gen(english_full_checkpoint / "s3gen.safetensors")


@pytest.mark.parametrize("tokens", [7, 30])
def test_padding_to_the_bucket_leaves_real_frames_unchanged(s3gen, english_full_checkpoint, tokens: int) -> None:
    noise, f = flow_inputs(s3gen, english_full_checkpoint, tokens)
    cfm = s3gen.flow.decoder
    with torch.inference_mode():
        plain = cfm.solve(noise, f.mask, f.mu, f.spks, f.cond, 4)
        padded = padded_solve(cfm.solve, noise, f.mask, f.mu, f.spks, f.cond, 4, bucket_frames=64)
    frames = noise.size(-1)
    assert bucket_length(frames, 64) > frames  # the case is really padded
    assert padded.shape == plain.shape
    torch.testing.assert_close(padded, plain, atol=2e-5, rtol=1e-5)


def test_graphs_are_off_on_the_cpu_and_for_other_shapes(s3gen) -> None:
    graphs = CFMGraphs(s3gen.flow.decoder.solve, channels=80, n_timesteps=10)
    x = torch.zeros(1, 80, 100)
    assert not graphs.supports(x, 10)  # a CPU tensor
    assert bucket_length(1, 64) == 64 and bucket_length(64, 64) == 64 and bucket_length(65, 64) == 128


def test_filler_rows_leave_a_batch_unchanged(s3gen, english_full_checkpoint) -> None:
    """A batch of 3 requests run as the graphs run it (4 rows, frames padded to the 128-frame bucket)."""
    cfm = s3gen.flow.decoder
    parts = [flow_inputs(s3gen, english_full_checkpoint, tokens) for tokens in (9, 9, 9)]
    g = torch.Generator().manual_seed(3)
    noise = torch.cat([p[0] for p in parts]) + 0.1 * torch.randn(parts[0][0].shape, generator=g)
    mask, mu, spks, cond = (torch.cat([getattr(p[1], name) for p in parts]) for name in ("mask", "mu", "spks", "cond"))
    mu = mu + 0.2 * torch.randn(mu.shape, generator=g)  # rows that really differ
    with torch.inference_mode():
        plain = cfm.solve(noise, mask, mu, spks, cond, 3)
        padded = padded_solve(cfm.solve, noise, mask, mu, spks, cond, 3, bucket_frames=128, rows=4)
    assert padded.shape == plain.shape
    torch.testing.assert_close(padded, plain, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(plain[0], plain[1])


def test_batch_shapes_share_few_graphs(s3gen) -> None:
    graphs = CFMGraphs(s3gen.flow.decoder.solve, channels=80, n_timesteps=10, max_rows=16)
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    # beyond 16 rows, steps of 16 (33 rows do not run as 64)
    assert [batch_bucket(n) for n in (17, 32, 33, 48, 49, 64)] == [32, 32, 48, 48, 64, 64]
    assert graphs.shape_for(1, 100) == (1, 128) and graphs.shape_for(1, 40) == (1, 64)
    assert graphs.shape_for(3, 100) == (4, 128) and graphs.shape_for(6, 300) == (8, 384)
    assert not graphs.supports(torch.zeros(17, 80, 10), 10)


def test_half_precision_compute_stays_near_float32(s3gen, english_full_checkpoint) -> None:
    """The opt-in `s3gen_dtype` bfloat16 and float16: the ODE under autocast lands near the float32 result, not on
    it, and float16 (three more mantissa bits) nearer than bfloat16."""
    noise, f = flow_inputs(s3gen, english_full_checkpoint, 12)
    cfm = s3gen.flow.decoder
    errors = {}
    with torch.inference_mode():
        full = cfm.solve(noise, f.mask, f.mu, f.spks, f.cond, 3)
        for dtype in (torch.bfloat16, torch.float16):
            cfm.compute_dtype = dtype
            try:
                half = cfm.solve(noise, f.mask, f.mu, f.spks, f.cond, 3)
            finally:
                cfm.compute_dtype = None
            assert half.dtype == torch.float32 and half.isfinite().all()
            errors[dtype] = (half - full).abs()
    for error in errors.values():
        assert error.max() > 0  # really computed in half precision
        assert error.mean() < 0.05 * full.abs().mean()
    assert errors[torch.float16].mean() < errors[torch.bfloat16].mean() / 2


def test_float16_overflow_falls_back_to_float32(s3gen, english_full_checkpoint, caplog) -> None:
    """float16 saturates at 65504: a flow that overflows answers the float32 result (and stays in float32), not NaN
    audio. The conditioning is scaled until the estimator's products pass float16's range."""
    noise, f = flow_inputs(s3gen, english_full_checkpoint, 12)
    cfm = s3gen.flow.decoder
    loud = f.mu * 1e5
    with torch.inference_mode():
        expected = cfm.solve(noise, f.mask, loud, f.spks, f.cond, 2)
        assert expected.isfinite().all()
        cfm.compute_dtype = torch.float16
        try:
            assert not cfm.solve(noise, f.mask, loud, f.spks, f.cond, 2).isfinite().all()  # it does overflow
            with caplog.at_level("WARNING"):
                out = cfm(loud, f.mask, f.spks, f.cond, n_timesteps=2, noise=noise)
            fell_back = cfm.compute_dtype is None
        finally:
            cfm.compute_dtype = None
    assert fell_back and "overflowed" in caplog.text
    assert torch.equal(out, expected)
