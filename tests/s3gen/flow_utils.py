"""Inputs of the flow-matching loop (`ConditionalCFM.solve`) built the way S3Gen builds them, for the flow tests."""

from __future__ import annotations

import torch

from chatterbox_vllm.conditioning import Conditionals


def flow_inputs(s3gen, checkpoint, tokens: int):
    """Noise and `flow.prepare`'s inputs for one piece of `tokens` random speech tokens after the built-in voice."""
    conds = Conditionals.load(checkpoint / "conds.pt")
    ref = s3gen._ref_inputs(conds.gen)
    speech = torch.randint(0, 6561, (1, tokens), generator=torch.Generator().manual_seed(tokens))
    inputs = s3gen.flow.prepare(speech, torch.tensor([tokens]), ref["prompt_token"], ref["prompt_token_len"],
                                ref["prompt_feat"], ref["embedding"])  # fmt: skip
    noise = torch.randn(inputs.mu.shape, generator=torch.Generator().manual_seed(1))
    return noise, inputs
