"""S3Gen on the seed-0 full-size checkpoint against the reference's golden `s3gen` and `audio_frontends` fixtures.

Float tensors go through the shared parity metric (tests/parity.py: error against the tensor's scale, bounded by
float32 rounding per stage); masks and copied inputs are exact. The full model is loaded once for this module.
The mutation tests at the end show that each check fails on one perturbed weight, a normalisation epsilon or an
activation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from flow_utils import golden_ref
from parity import assert_caught, check, perturbed, power_of_log
from safetensors.torch import load_file
from support.paths import golden_id, golden_params

from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.s3gen.estimator import GELUProjection
from chatterbox_vllm.models.s3gen.hift import SourceDraws


def _golden(directory: Path | None, name: str) -> dict[str, torch.Tensor]:
    path = directory / f"{name}.safetensors" if directory else None
    if path is None or not path.is_file():
        pytest.skip(f"no {name} fixture")
    return load_file(str(path))


@pytest.fixture(scope="module")
def s3gen(english_full_checkpoint):
    return load_s3gen(english_full_checkpoint / "s3gen.safetensors")


@pytest.mark.parametrize("golden", golden_params())
def test_flow_conditioning(s3gen, golden) -> None:
    """Encoder output and the decoder's mu, mask, spks and cond."""
    g = _golden(golden, "s3gen")
    ref = golden_ref(g)
    tokens = g["speech_tokens"]
    with torch.inference_mode():
        inputs = s3gen.flow.prepare(
            tokens, torch.tensor([tokens.size(1)]), ref["prompt_token"], ref["prompt_token_len"],
            ref["prompt_feat"], ref["embedding"],
        )
    assert inputs.prompt_frames == 313
    case = golden_id(golden)
    check("s3gen.encoder", inputs.encoder_out, g["encoder_out"], case=case)
    check("s3gen.encoder", inputs.mu, g["cfm_mu"], case=case)
    check("s3gen.spks", inputs.spks, g["cfm_spks"], case=case)
    assert torch.equal(inputs.mask, g["cfm_mask"])
    assert torch.equal(inputs.cond, g["cfm_cond"])  # the prompt mel, copied


@pytest.mark.parametrize("golden", golden_params())
def test_estimator_step0(s3gen, golden) -> None:
    """The CFG batch built at t=0 from (z, mu, mask, spks, cond), and the estimator's output on the captured one."""
    g = _golden(golden, "s3gen")
    t0 = torch.zeros(1)
    with torch.inference_mode():
        _, built = s3gen.flow.decoder.velocity(
            g["cfm_noise_z"], g["cfm_mask"], g["cfm_mu"], t0, g["cfm_spks"], g["cfm_cond"]
        )
        for name, value in built.items():
            assert torch.equal(value, g[f"est_step0_in_{name}"]), name
        out = s3gen.flow.decoder.estimator(
            x=g["est_step0_in_x"], mask=g["est_step0_in_mask"], mu=g["est_step0_in_mu"], t=g["est_step0_in_t"],
            spks=g["est_step0_in_spks"], cond=g["est_step0_in_cond"],
        )
    check("s3gen.estimator", out, g["est_step0_out"], case=golden_id(golden))


_CAPTURED: dict = {}


def _captured_run(s3gen, golden: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Mel and faded waveform with the reference's captured random draws injected (run once per fixture dir)."""
    if golden not in _CAPTURED:
        g = _golden(golden, "s3gen")
        ref = golden_ref(g)
        draws = SourceDraws(phase=g["hift_sine_phase"], noise=g["hift_sine_noise"])
        mel = s3gen.flow_inference(g["speech_tokens"], ref, noise=g["cfm_noise_z"])
        wav = s3gen.apply_trim_fade(s3gen.hift_inference(mel, draws=draws))
        _CAPTURED[golden] = (mel, wav)
    return _CAPTURED[golden]


@pytest.mark.parametrize("golden", golden_params())
def test_mel_with_captured_noise(s3gen, golden) -> None:
    g = _golden(golden, "s3gen")
    mel, _ = _captured_run(s3gen, golden)
    assert mel.shape == (1, 80, 99)
    check("s3gen.mel", mel, g["mel"], case=golden_id(golden))


@pytest.mark.parametrize("golden", golden_params())
def test_waveform_with_captured_draws(s3gen, golden) -> None:
    g = _golden(golden, "s3gen")
    _, wav = _captured_run(s3gen, golden)
    check("hift.wav", wav, g["wav"], case=golden_id(golden))
    assert torch.all(wav[:, :480] == 0)


@pytest.mark.parametrize("golden", golden_params())
def test_waveform_end_to_end_seeded(s3gen, golden) -> None:
    """`Generator().manual_seed(777)` reproduces the reference's `torch.manual_seed(777); s3gen.inference(...)`."""
    g = _golden(golden, "s3gen")
    ref = golden_ref(g)
    before = {k: v.clone() for k, v in ref.items() if v is not None}
    wav = s3gen.inference(g["speech_tokens"], ref, generator=torch.Generator().manual_seed(777))
    assert wav.shape == g["wav"].shape == (1, 47520)
    check("hift.wav", wav, g["wav"], case=golden_id(golden))
    for key, value in before.items():  # the reference casts the ref dict in place; we leave it alone
        assert ref[key].dtype == value.dtype and torch.equal(ref[key], value), key


@pytest.mark.parametrize("golden", golden_params())
def test_embed_ref(s3gen, golden) -> None:
    g = _golden(golden, "audio_frontends")
    ref = s3gen.embed_ref(g["wav_24k"], 24000)
    assert ref["prompt_feat_len"] is None
    assert torch.equal(ref["prompt_token"], g["embed_ref_prompt_token"])
    assert torch.equal(ref["prompt_token_len"], g["embed_ref_prompt_token_len"])
    case = golden_id(golden)
    mel, want = ref["prompt_feat"].transpose(1, 2), g["embed_ref_prompt_feat"].transpose(1, 2)  # frames last
    check("s3gen.mel_24k", power_of_log(mel), power_of_log(want), case=case)
    check("campplus.embedding", ref["embedding"], g["embed_ref_embedding"], case=case)
    # [1, N] input and a numpy array give the same dict.
    again = s3gen.embed_ref(g["wav_24k"].numpy()[None], 24000)
    assert torch.equal(again["prompt_token"], ref["prompt_token"])
    assert torch.equal(again["prompt_feat"], ref["prompt_feat"])


# ------------------------------------------------------------------------------------------------ mutants
FIRST = golden_params()[:1]


def _prepare(s3gen, g):
    ref = golden_ref(g)
    tokens = g["speech_tokens"]
    with torch.inference_mode():
        return s3gen.flow.prepare(
            tokens, torch.tensor([tokens.size(1)]), ref["prompt_token"], ref["prompt_token_len"],
            ref["prompt_feat"], ref["embedding"],
        )


@pytest.mark.parametrize("golden", FIRST)
def test_encoder_check_catches_a_weight_and_a_norm_epsilon(s3gen, golden, monkeypatch) -> None:
    g = _golden(golden, "s3gen")
    name = "encoders.3.feed_forward.w_1.weight"
    with perturbed(s3gen.flow.encoder, name):
        out = _prepare(s3gen, g).encoder_out
    assert_caught("s3gen.encoder", out, g["encoder_out"], mutant=f"s3gen encoder: {name} x (1+1e-3)")

    # The Conformer blocks' LayerNorm eps (1e-12) on the input layer's LayerNorm, whose eps is 1e-5. (The opposite
    # mix-up is invisible in float32: the blocks' inputs have a variance of ~500, so their eps never matters.)
    monkeypatch.setattr(s3gen.flow.encoder.embed.out[1], "eps", 1e-12)
    out = _prepare(s3gen, g).encoder_out
    assert_caught("s3gen.encoder", out, g["encoder_out"], mutant="s3gen encoder: input LayerNorm eps 1e-12")


@pytest.mark.parametrize("golden", FIRST)
def test_spks_check_catches_a_perturbed_weight(s3gen, golden) -> None:
    g = _golden(golden, "s3gen")
    with perturbed(s3gen.flow, "spk_embed_affine_layer.weight"):
        spks = _prepare(s3gen, g).spks
    assert_caught("s3gen.spks", spks, g["cfm_spks"], mutant="s3gen spks: spk_embed_affine_layer x (1+1e-3)")


def _estimator_step0(s3gen, g) -> torch.Tensor:
    with torch.inference_mode():
        return s3gen.flow.decoder.estimator(
            x=g["est_step0_in_x"], mask=g["est_step0_in_mask"], mu=g["est_step0_in_mu"], t=g["est_step0_in_t"],
            spks=g["est_step0_in_spks"], cond=g["est_step0_in_cond"],
        )


@pytest.mark.parametrize("golden", FIRST)
def test_estimator_check_catches_a_weight_and_an_activation(s3gen, golden, monkeypatch) -> None:
    g = _golden(golden, "s3gen")
    name = "mid_blocks.5.1.2.attn1.to_v.weight"
    with perturbed(s3gen.flow.decoder.estimator, name):
        out = _estimator_step0(s3gen, g)
    assert_caught("s3gen.estimator", out, g["est_step0_out"], mutant=f"s3gen estimator: {name} x (1+1e-3)")

    # tanh-approximated GELU (GPT-2's) where the reference's transformer blocks use the exact one
    monkeypatch.setattr(GELUProjection, "forward", lambda self, x: F.gelu(self.proj(x), approximate="tanh"))
    out = _estimator_step0(s3gen, g)
    assert_caught("s3gen.estimator", out, g["est_step0_out"], mutant="s3gen estimator: tanh GELU")


@pytest.mark.parametrize("golden", FIRST)
def test_mel_check_catches_a_perturbed_estimator_weight(s3gen, golden) -> None:
    """Ten guided Euler steps do not wash out one estimator tensor scaled by 1 + 1e-3."""
    g = _golden(golden, "s3gen")
    name = "mid_blocks.5.1.2.attn1.to_v.weight"
    with perturbed(s3gen.flow.decoder.estimator, name):
        mel = s3gen.flow_inference(g["speech_tokens"], golden_ref(g), noise=g["cfm_noise_z"])
    assert_caught("s3gen.mel", mel, g["mel"], mutant=f"s3gen mel: {name} x (1+1e-3)")
