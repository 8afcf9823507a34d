"""The sampling chain against Hugging Face's logits processors (which the reference instantiates)."""

from __future__ import annotations

import pytest
import torch

from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.engine.sampling import (
    apply_cfg,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_p,
    make_generator,
    sampling_probs,
)

lp = pytest.importorskip("transformers.generation.logits_process")


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 8194, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("penalty", [1.2, 2.0, 0.7])
def test_repetition_penalty_matches_hf(penalty: float) -> None:
    logits = _logits(1)
    history = torch.tensor([6561, 5, 5, 900, 17, 900, 6561])  # repeats count once
    want = lp.RepetitionPenaltyLogitsProcessor(penalty=penalty)(history[None], logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, history, penalty), want)


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 1.0])
def test_min_p_matches_hf(min_p: float) -> None:
    logits = _logits(2)
    want = lp.MinPLogitsWarper(min_p=min_p)(None, logits.clone())
    assert torch.equal(apply_min_p(logits, min_p), want)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999, 1.0])
def test_top_p_matches_hf(top_p: float) -> None:
    logits = _logits(3)
    want = torch.softmax(lp.TopPLogitsWarper(top_p=top_p)(None, logits.clone()), -1)
    assert torch.equal(torch.softmax(apply_top_p(logits, top_p), -1), want)


def test_full_chain_order() -> None:
    cond, uncond = _logits(4), _logits(5)
    history = torch.tensor([6561, 10, 11])
    params = SamplingParams(temperature=0.7, top_p=0.8, min_p=0.02, repetition_penalty=1.3, cfg_weight=0.4)
    x = cond + torch.tensor(0.4) * (cond - uncond)
    x = lp.RepetitionPenaltyLogitsProcessor(penalty=1.3)(history[None], x)
    x = x / 0.7
    x = lp.MinPLogitsWarper(min_p=0.02)(history[None], x)
    x = lp.TopPLogitsWarper(top_p=0.8)(history[None], x)
    want = torch.softmax(x, dim=-1)
    got = sampling_probs(apply_cfg(cond, uncond, 0.4), history, params)
    assert torch.equal(got, want)


def test_generator_stream_equals_global_seed() -> None:
    probs = torch.softmax(_logits(6), -1)
    torch.manual_seed(0)
    want = [int(torch.multinomial(probs, 1)) for _ in range(5)]
    gen = make_generator(0, "cpu")
    assert [int(torch.multinomial(probs, 1, generator=gen)) for _ in range(5)] == want
