"""The multilingual checkpoint's `s3gen.pt` (a pickled state dict with all 2490 tensors) loads strictly."""

from __future__ import annotations

import torch
from safetensors import safe_open

from chatterbox_vllm.models.s3gen import load_s3gen


def test_multilingual_pt_loads_strictly(multilingual_full_checkpoint, english_full_checkpoint) -> None:
    model = load_s3gen(multilingual_full_checkpoint / "s3gen.pt")
    state = model.state_dict()
    assert len(state) == 2490
    assert torch.equal(model.tokenizer.window, torch.hann_window(400))
    # Seed-0 random tensors depend only on their names, so both variants' files hold the same values.
    with safe_open(str(english_full_checkpoint / "s3gen.safetensors"), "pt") as f:
        for name in ("flow.input_embedding.weight", "flow.decoder.estimator.final_proj.weight", "mel2wav.conv_pre.bias"):
            assert torch.equal(state[name], f.get_tensor(name)), name
