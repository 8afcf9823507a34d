"""End-to-end T3 decode vs the reference's `generate()` (English, "Hello world.", torch.manual_seed(0)).

The reference's sampled tokens are recorded in the golden `summary.json`. Our engine draws from a private
generator seeded with 0, which yields the same stream as the reference's global RNG after `manual_seed(0)`, so
with matching probabilities it must sample the very same tokens (433 + stop on the seed-0 checkpoint).
~2.5 min on 2 CPU cores; selected with `-m slow`.
"""

from __future__ import annotations

import json

import pytest
import torch
from support.checkpoints import full_checkpoint
from support.paths import golden_dirs

from chatterbox_vllm.checkpoint.layout import ENGLISH
from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.engine.torch_engine import TorchT3Engine
from chatterbox_vllm.models.t3 import T3Cond, T3Config, load_t3


@pytest.mark.slow
def test_english_generate_tokens_match_reference() -> None:
    recorded = None
    for d in golden_dirs():
        summary = d / "summary.json"
        if summary.is_file():
            gen = json.loads(summary.read_text()).get("generate", {}).get("english", {})
            if gen.get("t3_tokens") and gen.get("text") == "Hello world." and gen.get("torch_manual_seed") == 0:
                recorded = gen["t3_tokens"]
                break
    if recorded is None:
        pytest.skip("no recorded English generate() tokens")
    tokenizers = pytest.importorskip("tokenizers")

    directory = full_checkpoint("english", ENGLISH.t3)
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / ENGLISH.text_tokenizer))
    ids = tokenizer.encode("Hello world.".replace(" ", "[SPACE]")).ids
    text = torch.tensor([255, *ids, 0])
    raw = torch.load(directory / ENGLISH.conds, map_location="cpu", weights_only=True)["t3"]
    cond = T3Cond(raw["speaker_emb"], raw["cond_prompt_speech_tokens"], raw["emotion_adv"])
    engine = TorchT3Engine(load_t3(directory / ENGLISH.t3, T3Config.english()), device="cpu")

    tokens = engine.generate(text, cond, SamplingParams(seed=0))  # English defaults = the reference's
    assert recorded[-1] == 6562
    assert tokens == recorded[:-1]
