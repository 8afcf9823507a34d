"""GPT-2 T3 (Turbo, Nano) against the reference: full-size tensor manifests, and on tiny seed-0 weights the
conditioning prefix, prefill embeddings, logits, Turbo's sampling distribution and a top-1 decode
(`tools/reference/make_gpt2_t3_fixtures.py`). Float tensors go through the shared parity metric (tests/parity.py);
the mutation tests show each check fails on one perturbed weight, a LayerNorm epsilon or GELU's exact form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import assert_caught, check, perturbed
from safetensors.torch import load_file
from torch import nn

from chatterbox_vllm.engine.base import SamplingParams, check_text_tokens
from chatterbox_vllm.engine.sampling import turbo_penalty_history, turbo_sampling_probs
from chatterbox_vllm.engine.torch_engine import TorchT3Engine
from chatterbox_vllm.models.t3 import T3, T3Cond, T3Config
from chatterbox_vllm.models.t3.gpt2 import GPT2MLP
from chatterbox_vllm.models.t3.loader import build_t3, infer_config
from chatterbox_vllm.random_checkpoint import build_state_dict, component_specs

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "turbo"


@pytest.mark.parametrize("variant,file", [("turbo", "t3_turbo_v1.safetensors"), ("nano", "t3_nano_v1.safetensors")])
def test_full_size_state_dict_equals_the_reference_manifest(variant: str, file: str) -> None:
    expected = json.loads((GOLDEN / f"{file}.json").read_text())
    with torch.device("meta"):
        model = T3(T3Config.for_variant(variant))
    ours = [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in model.state_dict().items()]  # fmt: skip
    assert ours == expected


def test_the_published_file_tells_turbo_from_nano() -> None:
    for variant in ("turbo", "nano", "english", "multilingual"):
        config = T3Config.for_variant(variant)
        text = torch.empty(config.text_tokens_dict_size, config.hidden_size, device="meta")
        assert infer_config({"text_emb.weight": text}) == config


@pytest.fixture(scope="module")
def model() -> T3:
    config = T3Config.tiny("turbo")
    model = build_t3(config)
    model.load_state_dict(build_state_dict(component_specs("t3", "turbo", "tiny"), 0, {}))
    return model.eval()


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "t3_gpt2_tiny.safetensors"))


def cond_of(g: dict[str, torch.Tensor]) -> T3Cond:
    return T3Cond(g["speaker_emb"], g["cond_prompt_speech_tokens"], torch.zeros(1, 1, 1))


@torch.inference_mode()
def _logits(model: T3, golden: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditioning, prefill embeddings and teacher-forced logits of the fixture's inputs."""
    cond = cond_of(golden)
    prefix = model.prefill_embeds(cond, golden["text_tokens"][0], cfg=False)
    forced = model.speech_embeds(golden["speech_tokens"], 1)
    hidden = model(torch.cat([prefix, forced], dim=1))
    return model.prepare_conditioning(cond), prefix, model.speech_logits(hidden[:, prefix.shape[1] - 1 :])


def test_prefix_and_logits_match_the_reference(model: T3, golden: dict[str, torch.Tensor]) -> None:
    cond_emb, prefix, logits = _logits(model, golden)
    check("t3_gpt2.cond_emb", cond_emb, golden["cond_emb"])
    check("t3_gpt2.cond_emb", prefix, golden["prefill_embeds"])
    check("t3_gpt2.logits", logits, golden["logits"])


def test_logits_check_catches_a_weight_a_norm_epsilon_and_an_activation(model, golden, monkeypatch) -> None:
    name = "tfmr.h.1.mlp.c_fc.weight"
    with perturbed(model, name):
        _, _, logits = _logits(model, golden)
    assert_caught("t3_gpt2.logits", logits, golden["logits"], mutant=f"t3 gpt2: {name} x (1+1e-3)")
    with monkeypatch.context() as m:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                m.setattr(module, "eps", 1e-3)
        _, _, logits = _logits(model, golden)
    assert_caught("t3_gpt2.logits", logits, golden["logits"], mutant="t3 gpt2: LayerNorm eps 1e-3")
    # exact GELU where GPT-2 uses its tanh approximation ("gelu_new")
    monkeypatch.setattr(GPT2MLP, "forward", lambda self, x: self.c_proj(F.gelu(self.c_fc(x))))
    _, _, logits = _logits(model, golden)
    assert_caught("t3_gpt2.logits", logits, golden["logits"], mutant="t3 gpt2: exact GELU")


def test_cond_emb_and_probs_checks_catch_a_weight_and_a_skipped_temperature(model, golden) -> None:
    with perturbed(model, "cond_enc.spkr_enc.weight"):
        cond_emb, _, _ = _logits(model, golden)
    assert_caught("t3_gpt2.cond_emb", cond_emb, golden["cond_emb"], mutant="t3 gpt2: spkr_enc x (1+1e-3)")
    history = turbo_penalty_history(6561, golden["speech_tokens"][0][:0])
    probs = turbo_sampling_probs(golden["logits"][0][0:1], history, SamplingParams.turbo(temperature=1.0))
    assert_caught("t3_gpt2.probs", probs, golden["probs_step0"], mutant="turbo sampling: temperature skipped")


def test_turbo_sampling_distribution_matches_the_reference(golden: dict[str, torch.Tensor]) -> None:
    params = SamplingParams.turbo()
    logits, forced = golden["logits"][0], golden["speech_tokens"][0]
    step0 = turbo_sampling_probs(logits[0:1], turbo_penalty_history(6561, forced[:0]), params)
    step3 = turbo_sampling_probs(logits[3:4], turbo_penalty_history(6561, forced[:3]), params)
    check("t3_gpt2.probs", step0, golden["probs_step0"])
    check("t3_gpt2.probs", step3, golden["probs_step3"])
    assert int((step0 > 0).sum()) <= 1000  # top-k did cut the 6563-token vocabulary


def test_top1_decode_equals_inference_turbo(model: T3, golden: dict[str, torch.Tensor]) -> None:
    expected = golden["top1_tokens"].tolist()
    engine = TorchT3Engine(model)
    params = SamplingParams.turbo(top_k=1, max_new_tokens=len(expected), seed=0)
    assert engine.generate(golden["text_tokens"][0], cond_of(golden), params) == expected
    # cfg_weight is ignored for GPT-2 T3, as the reference ignores it
    cfg = SamplingParams.turbo(top_k=1, max_new_tokens=len(expected), cfg_weight=0.5)
    assert engine.generate(golden["text_tokens"][0], cond_of(golden), cfg) == expected


def test_gpt2_text_needs_no_start_stop_tokens_and_is_bounded() -> None:
    config = T3Config.turbo()
    assert check_text_tokens(torch.tensor([464, 50257]), config).tolist() == [464, 50257]
    with pytest.raises(ValueError, match="ids must lie"):
        check_text_tokens(torch.tensor([50276]), config)
    with pytest.raises(ValueError, match="at most"):
        check_text_tokens(torch.zeros(config.n_positions, dtype=torch.long), config)
    with pytest.raises(ValueError, match="non-empty"):
        check_text_tokens(torch.tensor([], dtype=torch.long), config)


def test_gpt2_t3_refuses_cfg_rows_and_long_decodes(model: T3, golden: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="classifier-free guidance"):
        model.prefill_embeds(cond_of(golden), golden["text_tokens"][0], cfg=True)
    engine = TorchT3Engine(model)
    with pytest.raises(ValueError, match="position table"):
        engine.stream(golden["text_tokens"][0], cond_of(golden), SamplingParams.turbo(max_new_tokens=8000))
