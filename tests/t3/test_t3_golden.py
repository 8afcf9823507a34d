"""T3 parity with the reference (chatterbox-tts 0.1.7) on the seed-0 full-size random checkpoints.

Each variant's checkpoint is loaded once for the module. Float tensors go through the shared parity metric
(tests/parity.py: error against the tensor's scale, bounded by float32 rounding per stage); token layouts and the
sampling support are exact. The mutation tests at the end show each check fails on one perturbed weight, a
normalisation epsilon, an activation, the CFG formula or the order of the sampling chain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import assert_caught, check, perturbed
from safetensors.torch import load_file
from support.checkpoints import full_checkpoint
from support.paths import golden_id, golden_params

import chatterbox_vllm.engine.sampling as sampling_module
from chatterbox_vllm.checkpoint.layout import LAYOUTS
from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.engine.sampling import apply_cfg, sampling_probs
from chatterbox_vllm.models.t3 import T3, T3Cond, T3Config, load_t3
from chatterbox_vllm.models.t3.llama import LlamaMLP, RMSNorm

VARIANTS = ["english", "multilingual"]


@pytest.fixture(scope="module", params=VARIANTS)
def variant_model(request) -> tuple[str, T3]:
    variant = request.param
    directory = full_checkpoint(variant, LAYOUTS[variant].t3)
    model = load_t3(directory / LAYOUTS[variant].t3, T3Config.for_variant(variant))
    yield variant, model
    del model


class Case:
    """Our outputs for one golden fixture, computed once."""

    def __init__(self, model: T3, golden_dir: Path, variant: str) -> None:
        self.id = f"{variant}/{golden_id(golden_dir)}"
        self.meta = json.loads((golden_dir / f"t3_{variant}.json").read_text())
        self.g = load_file(str(golden_dir / f"t3_{variant}.safetensors"))
        g = self.g
        self.cond = T3Cond(g["speaker_emb"], g["cond_prompt_speech_tokens"], g["emotion_adv"])
        with torch.inference_mode():
            self.cond_emb = model.prepare_conditioning(self.cond)
            self.prefix = model.prefill_embeds(self.cond, g["text_tokens"][0], cfg=True)
            speech = model.speech_embeds(g["speech_tokens"][None].expand(2, -1), 1)
            self.inputs_embeds = torch.cat([self.prefix, speech], dim=1)
            self.hidden = model(self.inputs_embeds)
            self.logits = model.speech_logits(self.hidden[:, self.prefix.shape[1] - 1 :])


_cases: dict[tuple[str, str], Case] = {}


@pytest.fixture(params=golden_params())
def case(request, variant_model) -> Case:
    return _case(request.param, variant_model)


@pytest.fixture(params=golden_params()[:1])
def first_case(request, variant_model) -> Case:
    """The case of the first golden directory only (the mutants' reference)."""
    return _case(request.param, variant_model)


def _case(golden_dir: Path, variant_model: tuple[str, T3]) -> Case:
    variant, model = variant_model
    if not (golden_dir / f"t3_{variant}.safetensors").is_file():
        pytest.skip(f"no t3_{variant} fixture in {golden_dir}")
    key = (variant, str(golden_dir))
    if key not in _cases:
        _cases.clear()  # keep one variant's tensors alive at a time
        _cases[key] = Case(model, golden_dir, variant)
    return _cases[key]


def test_text_tokens_and_layout(case: Case) -> None:
    text = case.g["text_tokens"]
    assert torch.equal(text[0], text[1])
    assert int(text[0, 0]) == 255 and int(text[0, -1]) == 0
    assert case.cond_emb.shape[1] == case.meta["len_cond"] == 34
    assert case.prefix.shape[1] == case.meta["prefix_len_incl_both_bos"]
    assert case.inputs_embeds.shape[1] == case.meta["seq_len"]


def test_cond_emb(case: Case) -> None:
    check("t3.cond_emb", case.cond_emb, case.g["cond_emb"], case=case.id)


def test_inputs_embeds(case: Case) -> None:
    check("t3.cond_emb", case.inputs_embeds, case.g["inputs_embeds"], case=case.id)


def test_final_hidden(case: Case) -> None:
    check("t3.hidden", case.hidden, case.g["final_hidden"], case=case.id)


def test_logits(case: Case) -> None:
    cond, uncond = case.logits[0], case.logits[1]
    check("t3.logits", cond, case.g["logits_cond"], case=case.id)
    check("t3.logits", uncond, case.g["logits_uncond"], case=case.id)
    check("t3.logits_cfg", apply_cfg(cond, uncond, case.meta["cfg_weight"]), case.g["logits_cfg"], case=case.id)


def test_sampling_probs(case: Case) -> None:
    s = case.meta["sampling"]
    params = SamplingParams(
        temperature=s["temperature"], top_p=s["top_p"], min_p=s["min_p"], repetition_penalty=s["repetition_penalty"]
    )
    ours_cfg = apply_cfg(case.logits[0], case.logits[1], case.meta["cfg_weight"])
    want = case.g["sampling_probs_steps0to3"]
    speech = case.g["speech_tokens"]
    for k in range(want.shape[0]):
        history = torch.cat([torch.tensor([6561]), speech[:k]])
        # From the reference's own CFG logits (isolates the sampling chain) and from ours (end to end).
        from_ref = sampling_probs(case.g["logits_cfg"][k : k + 1], history, params)[0]
        from_ours = sampling_probs(ours_cfg[k : k + 1], history, params)[0]
        check("t3.probs_from_ref_logits", from_ref, want[k], case=case.id)
        check("t3.probs", from_ours, want[k], case=case.id)
        assert torch.equal(from_ref > 0, want[k] > 0)  # same min-p support


def test_kv_cache_path_matches_full_forward(case: Case, variant_model) -> None:
    _, model = variant_model
    embeds = case.inputs_embeds
    p = case.prefix.shape[1]
    with torch.inference_mode():
        cache = model.new_kv_cache(2, p + 4)
        parts = [model(embeds[:, :p], cache)[:, -1:]]
        parts += [model(embeds[:, j : j + 1], cache) for j in range(p, embeds.shape[1])]
        logits = model.speech_logits(torch.cat(parts, dim=1))
    check("t3.logits", logits[0], case.g["logits_cond"], case=case.id)
    check("t3.logits", logits[1], case.g["logits_uncond"], case=case.id)
    check("t3.logits", logits, case.logits, case=f"{case.id} kv-cache vs full")


# ------------------------------------------------------------------------------------------------ mutants
# One forward of the full model per mutant, for the first golden directory only.


def _forward(model: T3, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        hidden = model(case.inputs_embeds)
        return hidden, model.speech_logits(hidden[:, case.prefix.shape[1] - 1 :])


def test_hidden_check_catches_a_weight_and_an_activation(first_case: Case, variant_model, monkeypatch) -> None:
    case = first_case
    _, model = variant_model
    name = "tfmr.layers.15.mlp.down_proj.weight"
    with perturbed(model, name):
        hidden, _ = _forward(model, case)
    assert_caught("t3.hidden", hidden, case.g["final_hidden"], mutant=f"{case.id} t3: {name} x (1+1e-3)")

    def gelu_mlp(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))

    monkeypatch.setattr(LlamaMLP, "forward", gelu_mlp)
    hidden, _ = _forward(model, case)
    assert_caught("t3.hidden", hidden, case.g["final_hidden"], mutant=f"{case.id} t3: GELU for SiLU")


def test_cond_emb_check_catches_a_perturbed_perceiver_weight(first_case: Case, variant_model) -> None:
    case = first_case
    _, model = variant_model
    name = "cond_enc.perceiver.attn.to_v.weight"
    with perturbed(model, name), torch.inference_mode():
        cond_emb = model.prepare_conditioning(case.cond)
    assert_caught("t3.cond_emb", cond_emb, case.g["cond_emb"], mutant=f"{case.id} t3: {name} x (1+1e-3)")


def test_logits_check_catches_a_norm_epsilon(first_case: Case, variant_model, monkeypatch) -> None:
    """1e-6 (Hugging Face LlamaConfig's default) instead of the checkpoint's 1e-5 in every RMSNorm."""
    case = first_case
    _, model = variant_model
    for module in model.modules():
        if isinstance(module, RMSNorm):
            monkeypatch.setattr(module, "eps", 1e-6)
    _, logits = _forward(model, case)
    assert_caught("t3.logits", logits[0], case.g["logits_cond"], mutant=f"{case.id} t3: RMSNorm eps 1e-6")


def test_cfg_and_probs_checks_catch_a_wrong_formula_and_order(first_case: Case, monkeypatch) -> None:
    case = first_case
    w = case.meta["cfg_weight"]
    cond, uncond = case.g["logits_cond"], case.g["logits_uncond"]
    assert_caught("t3.logits_cfg", uncond + w * (cond - uncond), case.g["logits_cfg"],
                  mutant=f"{case.id} cfg: uncond + w (cond - uncond)")  # fmt: skip

    # min-p judged on the probabilities before the temperature, where the reference applies it after
    s = case.meta["sampling"]
    params = SamplingParams(temperature=s["temperature"], top_p=s["top_p"], min_p=s["min_p"],
                            repetition_penalty=s["repetition_penalty"])  # fmt: skip
    original = sampling_module.apply_min_p
    monkeypatch.setattr(sampling_module, "apply_min_p",
                        lambda logits, min_p: logits.masked_fill(
                            original(logits * params.temperature, min_p).isinf(), float("-inf")))  # fmt: skip
    want = case.g["sampling_probs_steps0to3"]
    history = torch.tensor([6561])
    probs = sampling_probs(case.g["logits_cfg"][:1], history, params)[0]
    assert_caught("t3.probs_from_ref_logits", probs, want[0], mutant=f"{case.id} sampling: min-p before temperature")
