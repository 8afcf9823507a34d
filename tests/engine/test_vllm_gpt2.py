"""GPT-2 T3 (Turbo, Nano) in vLLM against the PyTorch engine and the reference's top-1 decode, on the tiny seed-0
weights (`tests/fixtures/golden/turbo`). One vLLM engine for the module (its start costs ~30-60 s on CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("vllm")

from chatterbox_vllm.engine.base import SamplingParams  # noqa: E402
from chatterbox_vllm.engine.factory import prefix_only  # noqa: E402
from chatterbox_vllm.engine.torch_engine import TorchT3Engine  # noqa: E402
from chatterbox_vllm.engine.vllm_engine import VLLMOptions, VLLMT3Engine  # noqa: E402
from chatterbox_vllm.models.t3 import T3Cond, T3Config, load_t3  # noqa: E402
from chatterbox_vllm.random_checkpoint import build_state_dict, component_specs  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "turbo" / "t3_gpt2_tiny.safetensors"
OPTIONS = VLLMOptions(max_model_len=640, max_num_seqs=4, dtype="float32")


class Setup:
    def __init__(self, work: Path) -> None:
        self.config = T3Config.tiny("turbo")
        weights = work / "t3_turbo_v1.safetensors"
        save_file(dict(build_state_dict(component_specs("t3", "turbo", "tiny"), 0, {})), str(weights))
        self.reference = TorchT3Engine(load_t3(weights, self.config).eval())
        prefix = prefix_only(load_t3(weights, self.config).eval())
        self.engine = VLLMT3Engine(prefix, weights, dataclasses.replace(OPTIONS, cache_dir=work / "vllm-cache"))
        g = load_file(str(GOLDEN))
        self.golden = g
        self.cond = T3Cond(g["speaker_emb"], g["cond_prompt_speech_tokens"], torch.zeros(1, 1, 1))
        self.text = g["text_tokens"][0]


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory):
    setup = Setup(tmp_path_factory.mktemp("turbo-vllm"))
    yield setup
    setup.engine.shutdown()


def test_top1_decode_equals_the_reference(turbo: Setup) -> None:
    expected = turbo.golden["top1_tokens"].tolist()
    params = SamplingParams.turbo(top_k=1, max_new_tokens=len(expected), seed=3)
    assert turbo.engine.generate(turbo.text, turbo.cond, params) == expected


def test_greedy_tokens_equal_the_torch_engine_with_turbos_penalty(turbo: Setup) -> None:
    # Greedy here is the argmax after top-k, top-p and the penalty (start token first, then generated tokens), so
    # any difference in the chain or in the penalty's history changes tokens.
    params = SamplingParams.turbo(temperature=0.0, max_new_tokens=40)
    expected = turbo.reference.generate(turbo.text, turbo.cond, params)
    assert turbo.engine.generate(turbo.text, turbo.cond, params) == expected
    no_penalty = SamplingParams.turbo(temperature=0.0, max_new_tokens=40, repetition_penalty=1.0)
    assert turbo.reference.generate(turbo.text, turbo.cond, no_penalty) != expected  # the penalty did matter


def test_seeded_sampling_repeats_and_streams_the_same_tokens(turbo: Setup) -> None:
    params = SamplingParams.turbo(max_new_tokens=30, seed=11)
    first = turbo.engine.generate(turbo.text, turbo.cond, params)
    assert len(first) == 30 and all(0 <= t < 6563 for t in first)
    assert turbo.engine.generate(turbo.text, turbo.cond, params) == first
    assert list(turbo.engine.stream(turbo.text, turbo.cond, params)) == first
    other = turbo.engine.generate(turbo.text, turbo.cond, SamplingParams.turbo(max_new_tokens=30, seed=12))
    assert other != first


def test_the_torch_side_keeps_only_the_prefix(turbo: Setup) -> None:
    """vLLM holds the blocks, positions and head: the torch copy keeps conditioning and embeddings only."""
    prefix = turbo.engine.prefix_model
    names = {name for name, _ in prefix.named_parameters()}
    assert not any(name.startswith("tfmr.h.") for name in names)
    assert prefix.tfmr.wte.weight.numel() == prefix.tfmr.wpe.weight.numel() == 1
    assert {"cond_enc.spkr_enc.weight", "text_emb.weight", "speech_emb.weight"} <= names


def test_requests_beyond_the_engine_length_are_refused(turbo: Setup) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        turbo.engine.generate(turbo.text, turbo.cond, SamplingParams.turbo(max_new_tokens=600))
