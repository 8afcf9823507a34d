"""Requests of different voices and lengths vocoded in one padded flow batch give what each gives alone.

This is what lets the server batch S3Gen across concurrent requests without changing anyone's audio. Checked on the
full-size seed-0 S3Gen (the real encoder and estimator structure) with rows whose prompts and token counts differ.
"""

from __future__ import annotations

import pytest
import torch

from chatterbox_vllm.conditioning import Conditionals
from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.s3gen.flow import FlowRow

STEPS = 4


@pytest.fixture(scope="module")
def s3gen(english_full_checkpoint):
    return load_s3gen(english_full_checkpoint / "s3gen.safetensors")


def make_row(s3gen, conds: Conditionals, prompt_tokens: int, tokens: int, seed: int) -> FlowRow:
    """A request with the first `prompt_tokens` of the built-in prompt, its own x-vector and noise."""
    ref = s3gen._ref_inputs(conds.gen)
    g = torch.Generator().manual_seed(seed)
    embedding = ref["embedding"].reshape(-1) + 0.1 * torch.randn(ref["embedding"].numel(), generator=g)
    prompt_feat = ref["prompt_feat"].reshape(-1, 80)[: 2 * prompt_tokens]
    speech = torch.randint(0, 6561, (tokens,), generator=g)
    noise = torch.randn(80, 2 * (prompt_tokens + tokens), generator=g)
    return FlowRow(speech, ref["prompt_token"].reshape(-1)[:prompt_tokens], prompt_feat, embedding, noise)


def alone(s3gen, row: FlowRow) -> torch.Tensor:
    return s3gen.flow.inference(
        row.tokens[None],
        torch.tensor([row.tokens.numel()]),
        row.prompt_token[None],
        torch.tensor([row.prompt_token.numel()]),
        row.prompt_feat[None],
        None,
        row.embedding[None],
        noise=row.noise[None],
        n_timesteps=STEPS,
    )[0]


def test_padded_rows_match_each_row_alone(s3gen, english_full_checkpoint) -> None:
    conds = Conditionals.load(english_full_checkpoint / "conds.pt")
    rows = [make_row(s3gen, conds, 40, 23, 1), make_row(s3gen, conds, 25, 9, 2), make_row(s3gen, conds, 33, 30, 3)]
    with torch.inference_mode():
        batched = s3gen.flow.inference_rows(rows, n_timesteps=STEPS)
        singles = [alone(s3gen, row) for row in rows]
    for row, got, want in zip(rows, batched, singles, strict=True):
        assert got.shape == want.shape == (80, 2 * row.tokens.numel())
        torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4)
    # and the rows really differ (a batch that mixed them up could not pass the loop above by accident)
    assert not torch.allclose(batched[0][:, :18], batched[1][:, :18])


def test_a_batch_of_one_is_the_plain_inference(s3gen, english_full_checkpoint) -> None:
    conds = Conditionals.load(english_full_checkpoint / "conds.pt")
    row = make_row(s3gen, conds, 30, 12, 4)
    with torch.inference_mode():
        torch.testing.assert_close(s3gen.flow.inference_rows([row], n_timesteps=STEPS)[0], alone(s3gen, row))
