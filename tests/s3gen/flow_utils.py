"""Inputs of S3Gen for its tests: the flow-matching loop's (`ConditionalCFM.solve`) built the way S3Gen builds them,
and the reference voice of a golden fixture."""

from __future__ import annotations

import torch

from chatterbox_vllm.conditioning import Conditionals


def flow_inputs(s3gen, checkpoint, tokens: int):
    """Noise and `flow.prepare`'s inputs for one piece of `tokens` random speech tokens after the built-in voice."""
    device = next(s3gen.parameters()).device  # the same numbers on any device: drawn on the CPU, then moved
    conds = Conditionals.load(checkpoint / "conds.pt").to(device)
    ref = s3gen._ref_inputs(conds.gen)
    speech = torch.randint(0, 6561, (1, tokens), generator=torch.Generator().manual_seed(tokens)).to(device)
    inputs = s3gen.flow.prepare(speech, torch.tensor([tokens], device=device), ref["prompt_token"],
                                ref["prompt_token_len"], ref["prompt_feat"], ref["embedding"])  # fmt: skip
    noise = torch.randn(inputs.mu.shape, generator=torch.Generator().manual_seed(1)).to(device)
    return noise, inputs


def golden_ref(g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The reference voice's S3Gen inputs (`ref_dict`) stored in a golden fixture."""
    return {
        "prompt_token": g["ref_prompt_token"],
        "prompt_token_len": g["ref_prompt_token_len"],
        "prompt_feat": g["ref_prompt_feat"],
        "prompt_feat_len": None,
        "embedding": g["ref_embedding"],
    }
