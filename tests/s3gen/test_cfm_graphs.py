"""The flow-matching loop padded to a CUDA-graph bucket gives the unpadded result on the real frames.

CUDA graphs themselves need a GPU (benchmarks measure them there); the computation they replay is `padded_solve`,
checked here on the full-size seed-0 S3Gen, whose estimator has the real block structure.
"""

from __future__ import annotations

import pytest
import torch

from chatterbox_vllm.conditioning import Conditionals
from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.s3gen.cfm_graphs import CFMGraphs, bucket_length, padded_solve


@pytest.fixture(scope="module")
def s3gen(english_full_checkpoint):
    return load_s3gen(english_full_checkpoint / "s3gen.safetensors")


def flow_inputs(s3gen, checkpoint, tokens: int):
    conds = Conditionals.load(checkpoint / "conds.pt")
    ref = s3gen._ref_inputs(conds.gen)
    speech = torch.randint(0, 6561, (1, tokens), generator=torch.Generator().manual_seed(tokens))
    inputs = s3gen.flow.prepare(speech, torch.tensor([tokens]), ref["prompt_token"], ref["prompt_token_len"],
                                ref["prompt_feat"], ref["embedding"])  # fmt: skip
    noise = torch.randn(inputs.mu.shape, generator=torch.Generator().manual_seed(1))
    return noise, inputs


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
