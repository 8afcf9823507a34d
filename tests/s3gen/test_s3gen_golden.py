"""S3Gen on the seed-0 full-size checkpoint against the reference's golden `s3gen` and `audio_frontends` fixtures.

Suggested tolerances (fp32): encoder output / decoder inputs 1e-4; mel 1e-3 absolute (10 Euler steps compound);
waveform 1e-3 absolute. The full model is loaded once for this module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import golden_params
from safetensors.torch import load_file

from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.s3gen.hift import SourceDraws

STAGE_ATOL = 1e-4
MEL_ATOL = 1e-3
WAV_ATOL = 1e-3
EMB_ATOL = 1e-4


def _golden(directory: Path | None, name: str) -> dict[str, torch.Tensor]:
    path = directory / f"{name}.safetensors" if directory else None
    if path is None or not path.is_file():
        pytest.skip(f"no {name} fixture")
    return load_file(str(path))


def _ref_dict(g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    return {
        "prompt_token": g["ref_prompt_token"],
        "prompt_token_len": g["ref_prompt_token_len"],
        "prompt_feat": g["ref_prompt_feat"],
        "prompt_feat_len": None,
        "embedding": g["ref_embedding"],
    }


def _max_abs(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert tuple(ours.shape) == tuple(ref.shape)
    return float((ours.double() - ref.double()).abs().max())


@pytest.fixture(scope="module")
def s3gen(english_full_checkpoint):
    return load_s3gen(english_full_checkpoint / "s3gen.safetensors")


@pytest.mark.parametrize("golden", golden_params())
def test_flow_conditioning(s3gen, golden) -> None:
    """Encoder output and the decoder's mu, mask, spks and cond."""
    g = _golden(golden, "s3gen")
    ref = _ref_dict(g)
    tokens = g["speech_tokens"]
    with torch.inference_mode():
        inputs = s3gen.flow.prepare(
            tokens, torch.tensor([tokens.size(1)]), ref["prompt_token"], ref["prompt_token_len"],
            ref["prompt_feat"], ref["embedding"],
        )
    assert inputs.prompt_frames == 313
    errors = {
        "encoder_out": _max_abs(inputs.encoder_out, g["encoder_out"]),
        "cfm_mu": _max_abs(inputs.mu, g["cfm_mu"]),
        "cfm_mask": _max_abs(inputs.mask, g["cfm_mask"]),
        "cfm_spks": _max_abs(inputs.spks, g["cfm_spks"]),
        "cfm_cond": _max_abs(inputs.cond, g["cfm_cond"]),
    }
    assert max(errors.values()) < STAGE_ATOL, errors


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
    assert _max_abs(out, g["est_step0_out"]) < STAGE_ATOL


_CAPTURED: dict = {}


def _captured_run(s3gen, golden: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Mel and faded waveform with the reference's captured random draws injected (run once per fixture dir)."""
    if golden not in _CAPTURED:
        g = _golden(golden, "s3gen")
        ref = _ref_dict(g)
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
    assert _max_abs(mel, g["mel"]) < MEL_ATOL


@pytest.mark.parametrize("golden", golden_params())
def test_waveform_with_captured_draws(s3gen, golden) -> None:
    g = _golden(golden, "s3gen")
    _, wav = _captured_run(s3gen, golden)
    assert _max_abs(wav, g["wav"]) < WAV_ATOL
    assert torch.all(wav[:, :480] == 0)


@pytest.mark.parametrize("golden", golden_params())
def test_waveform_end_to_end_seeded(s3gen, golden) -> None:
    """`Generator().manual_seed(777)` reproduces the reference's `torch.manual_seed(777); s3gen.inference(...)`."""
    g = _golden(golden, "s3gen")
    ref = _ref_dict(g)
    before = {k: v.clone() for k, v in ref.items() if v is not None}
    wav = s3gen.inference(g["speech_tokens"], ref, generator=torch.Generator().manual_seed(777))
    assert wav.shape == g["wav"].shape == (1, 47520)
    assert _max_abs(wav, g["wav"]) < WAV_ATOL
    for key, value in before.items():  # the reference casts the ref dict in place; we leave it alone
        assert ref[key].dtype == value.dtype and torch.equal(ref[key], value), key


@pytest.mark.parametrize("golden", golden_params())
def test_embed_ref(s3gen, golden) -> None:
    g = _golden(golden, "audio_frontends")
    ref = s3gen.embed_ref(g["wav_24k"], 24000)
    assert ref["prompt_feat_len"] is None
    assert torch.equal(ref["prompt_token"], g["embed_ref_prompt_token"])
    assert torch.equal(ref["prompt_token_len"], g["embed_ref_prompt_token_len"])
    want = g["embed_ref_prompt_feat"]
    feat_err = float(((ref["prompt_feat"] - want).abs() / want.abs().clamp(min=1e-3)).max())
    assert feat_err < 1e-4
    assert _max_abs(ref["embedding"], g["embed_ref_embedding"]) < EMB_ATOL
    # [1, N] input and a numpy array give the same dict.
    again = s3gen.embed_ref(g["wav_24k"].numpy()[None], 24000)
    assert torch.equal(again["prompt_token"], ref["prompt_token"])
    assert torch.equal(again["prompt_feat"], ref["prompt_feat"])
