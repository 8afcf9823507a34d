"""Comparing two voices' conditioning tensors."""

from __future__ import annotations

import torch


def assert_same_conditionals(got, want) -> None:
    """Two voices' conditionals (`Conditionals`) agree: token tensors exactly, float tensors within 1e-5 of their
    own scale."""
    pairs = {"speaker_emb": (got.t3.speaker_emb, want.t3.speaker_emb),
             "cond_prompt_speech_tokens": (got.t3.cond_prompt_speech_tokens, want.t3.cond_prompt_speech_tokens)}  # fmt: skip
    pairs.update({key: (got.gen[key], want.gen[key]) for key in ("prompt_token", "prompt_token_len", "prompt_feat",
                                                                   "embedding")})  # fmt: skip
    for key, (a, b) in pairs.items():
        assert a.shape == b.shape and a.dtype == b.dtype, key
        if a.is_floating_point():
            scale = float(b.abs().max())
            assert scale > 0, key
            assert float((a - b).abs().max()) <= 1e-5 * scale, key
        else:
            assert torch.equal(a, b), key
    assert got.gen["prompt_feat_len"] is None and float(got.t3.emotion_adv.reshape(-1)[0]) == 0.5
