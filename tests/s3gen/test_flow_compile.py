"""S3Gen's estimator blocks under torch.compile (`s3gen_compile`): same velocity field, one compilation for every
shape. On a GPU the compiled blocks run inside the flow's CUDA graphs; here Inductor's CPU backend compiles the
same graphs, which checks what it fuses computes what the eager blocks compute."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import resolve_model
from chatterbox_vllm.models.s3gen import load_s3gen
from flow_utils import flow_inputs


def flow_case(s3gen, checkpoint, rows: int, tokens: int, seed: int):
    """`solve`'s inputs for `rows` pieces of `tokens` tokens after the voice prompt, rows made to differ."""
    noise, f = flow_inputs(s3gen, checkpoint, tokens)
    g = torch.Generator().manual_seed(seed)
    shape = (rows, *f.mu.shape[1:])
    mu = f.mu.expand(shape) + 0.1 * torch.randn(shape, generator=g)
    noise = noise.expand(shape) + 0.1 * torch.randn(shape, generator=g)
    return noise, f.mask.expand(rows, -1, -1), mu, f.spks.expand(rows, -1), f.cond.expand(shape)


def test_compiled_blocks_match_eager_for_every_shape(english_tiny_checkpoint) -> None:
    directory, layout = resolve_model(str(english_tiny_checkpoint))
    s3gen = load_s3gen(directory / layout.s3gen, load_model_config(directory, layout).s3gen).eval()
    cfm = s3gen.flow.decoder
    shapes = [(1, 10), (1, 33), (3, 17)]  # (rows, tokens)
    cases = [flow_case(s3gen, directory, rows, tokens, seed) for seed, (rows, tokens) in enumerate(shapes)]
    with torch.inference_mode():
        eager = [cfm.solve(*case, 3) for case in cases]
        assert not cfm.compiled
        cfm.compile_blocks()
        compiled = [cfm.solve(*cases[0], 3)]
        graphs_after_first = counters["stats"]["unique_graphs"]
        compiled += [cfm.solve(*case, 3) for case in cases[1:]]
    assert cfm.compiled
    # other frame counts and row counts reuse the first compilation (dynamic shapes), no recompiling per request
    assert counters["stats"]["unique_graphs"] == graphs_after_first
    for got, want in zip(compiled, eager):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)

    # the way back where Inductor cannot build kernels (start-up falls back to eager blocks)
    cfm.uncompile_blocks()
    with torch.inference_mode():
        again = cfm.solve(*cases[0], 3)
    assert not cfm.compiled
    assert not torch.equal(compiled[0], eager[0])  # Inductor's fused kernels round differently ...
    assert torch.equal(again, eager[0])  # ... so bit-equality says the eager blocks run again
