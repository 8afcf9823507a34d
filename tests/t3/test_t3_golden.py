"""T3 parity with the reference (chatterbox-tts 0.1.7) on the seed-0 full-size random checkpoints.

Each variant's checkpoint is loaded once for the module. Tolerances are the kit's: embeddings 1e-5 abs, logits
1e-3 abs / 1e-4 rel, sampling probabilities 1e-5 abs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import full_checkpoint, golden_params
from safetensors.torch import load_file

from chatterbox_vllm.checkpoint.layout import LAYOUTS
from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.engine.sampling import apply_cfg, sampling_probs
from chatterbox_vllm.models.t3 import T3, T3Cond, T3Config, load_t3

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
    golden_dir = request.param
    variant, model = variant_model
    if not (golden_dir / f"t3_{variant}.safetensors").is_file():
        pytest.skip(f"no t3_{variant} fixture in {golden_dir}")
    key = (variant, str(golden_dir))
    if key not in _cases:
        _cases.clear()  # keep one variant's tensors alive at a time
        _cases[key] = Case(model, golden_dir, variant)
    return _cases[key]


def _report(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    diff = (got - want).abs()
    print(f"{name}: max abs {diff.max().item():.3e}, max rel {(diff.max() / want.abs().max()).item():.3e}")


def test_text_tokens_and_layout(case: Case) -> None:
    text = case.g["text_tokens"]
    assert torch.equal(text[0], text[1])
    assert int(text[0, 0]) == 255 and int(text[0, -1]) == 0
    assert case.cond_emb.shape[1] == case.meta["len_cond"] == 34
    assert case.prefix.shape[1] == case.meta["prefix_len_incl_both_bos"]
    assert case.inputs_embeds.shape[1] == case.meta["seq_len"]


def test_cond_emb(case: Case) -> None:
    _report("cond_emb", case.cond_emb, case.g["cond_emb"])
    torch.testing.assert_close(case.cond_emb, case.g["cond_emb"], atol=1e-5, rtol=0)


def test_inputs_embeds(case: Case) -> None:
    _report("inputs_embeds", case.inputs_embeds, case.g["inputs_embeds"])
    torch.testing.assert_close(case.inputs_embeds, case.g["inputs_embeds"], atol=1e-5, rtol=0)


def test_final_hidden(case: Case) -> None:
    _report("final_hidden", case.hidden, case.g["final_hidden"])
    torch.testing.assert_close(case.hidden, case.g["final_hidden"], atol=1e-4, rtol=1e-4)


def test_logits(case: Case) -> None:
    cond, uncond = case.logits[0], case.logits[1]
    cfg = apply_cfg(cond, uncond, case.meta["cfg_weight"])
    for name, got in (("logits_cond", cond), ("logits_uncond", uncond), ("logits_cfg", cfg)):
        _report(name, got, case.g[name])
        torch.testing.assert_close(got, case.g[name], atol=1e-3, rtol=1e-4)


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
        _report(f"probs[{k}] (ref logits)", from_ref, want[k])
        _report(f"probs[{k}] (our logits)", from_ours, want[k])
        torch.testing.assert_close(from_ref, want[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(from_ours, want[k], atol=1e-5, rtol=0)
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
    _report("kv-cache logits_cond", logits[0], case.g["logits_cond"])
    torch.testing.assert_close(logits[0], case.g["logits_cond"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(logits[1], case.g["logits_uncond"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(logits, case.logits, atol=1e-4, rtol=1e-4)
