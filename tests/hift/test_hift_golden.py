"""HiFT on the seed-0 full-size weights against the reference's `s3gen` and `hift_voiced` golden fixtures.

Float tensors go through the shared parity metric (tests/parity.py: error against the tensor's scale, bounded by
float32 rounding per stage). The reference itself, re-run on another host or thread count, moves its waveform by
a few hundred eps of its scale: convolution accumulation order varies with the CPU, and the exponential that
turns log-magnitudes into magnitudes (up to 100) amplifies it; the `hift.wav` bound says so. Random draws are
injected from the fixtures, or drawn from a seeded generator to check the RNG contract. The mutation tests at the
end show each check fails on one perturbed weight, a wrong activation slope or a wrong window.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import assert_caught, check, perturbed
from safetensors.torch import load_file
from support.paths import golden_id, golden_params

import chatterbox_vllm.models.s3gen.hift as hift_module
from chatterbox_vllm.checkpoint.weights import load_strict, read_state_dict
from chatterbox_vllm.models.s3gen.hift import HiFTConfig, HiFTGenerator, SourceDraws

PREFIX = "mel2wav."


def _golden(directory: Path | None, name: str) -> dict[str, torch.Tensor]:
    path = directory / f"{name}.safetensors" if directory else None
    if path is None or not path.is_file():
        pytest.skip(f"no {name} fixture")
    return load_file(str(path))


@pytest.fixture(scope="module")
def hift(english_full_checkpoint) -> HiFTGenerator:
    """The vocoder alone, from the `mel2wav.*` tensors of the full S3Gen file (read once for this module)."""
    path = english_full_checkpoint / "s3gen.safetensors"
    state = {k[len(PREFIX) :]: v for k, v in read_state_dict(path).items() if k.startswith(PREFIX)}
    model = HiFTGenerator(HiFTConfig())
    load_strict(model, state, str(path))
    return model.eval()


@pytest.fixture(scope="module")
def captured(hift):
    """Per golden dir: the full inference with the fixture's draws, with `conv_post`'s output captured."""
    cache: dict[Path, dict[str, torch.Tensor]] = {}

    def run(golden: Path) -> dict[str, torch.Tensor]:
        if golden not in cache:
            g = _golden(golden, "s3gen")
            out: dict[str, torch.Tensor] = {}
            hook = hift.conv_post.register_forward_hook(lambda m, i, o: out.__setitem__("conv_post", o.clone()))
            try:
                draws = SourceDraws(g["hift_sine_phase"], g["hift_sine_noise"])
                out["wav"], out["source"] = hift.inference(g["mel"], draws=draws)
            finally:
                hook.remove()
            cache[golden] = out
        return cache[golden]

    return run


@pytest.mark.parametrize("golden", golden_params())
def test_f0(hift, golden) -> None:
    g = _golden(golden, "s3gen")
    with torch.inference_mode():
        f0 = hift.f0_predictor(g["mel"])
    check("hift.f0", f0, g["hift_f0"], case=golden_id(golden))


@pytest.mark.parametrize("golden", golden_params())
def test_source_conv_post_and_wav(hift, captured, golden) -> None:
    g = _golden(golden, "s3gen")
    out = captured(golden)
    case = golden_id(golden)
    check("hift.source", out["source"], g["hift_source"], case=case)
    check("hift.conv_post", out["conv_post"], g["hift_conv_post_out"], case=case)
    check("hift.wav", out["wav"], g["hift_wav_before_trim_fade"], case=case)


@pytest.mark.parametrize("golden", golden_params())
def test_istft_of_reference_spectrum(hift, golden) -> None:
    g = _golden(golden, "s3gen")
    with torch.inference_mode():
        wav = hift.istft(g["hift_conv_post_out"])
    check("hift.istft", wav, g["hift_istft_out_before_clamp"], case=golden_id(golden))


@pytest.mark.parametrize("golden", golden_params())
def test_trim_fade_matches_final_wav(captured, golden) -> None:
    """S3Gen fades in our vocoder output (first 960 samples) into the reference's final waveform."""
    from chatterbox_vllm.models.s3gen.s3gen import trim_fade_window

    g = _golden(golden, "s3gen")
    wav = captured(golden)["wav"].clone()
    fade = trim_fade_window(24_000 // 50)
    wav[:, : fade.numel()] *= fade
    check("hift.wav", wav, g["wav"], case=golden_id(golden))
    assert torch.equal(wav[:, :480], torch.zeros(1, 480))


@pytest.mark.parametrize("golden", golden_params())
def test_generator_reproduces_reference_rng(hift, captured, golden) -> None:
    """`Generator().manual_seed(777)`, first used for the flow's z, then by HiFT = the reference's global RNG."""
    g = _golden(golden, "s3gen")
    gen = torch.Generator().manual_seed(777)
    z = torch.randn(g["cfm_noise_z"].shape, generator=gen)
    case = golden_id(golden)
    check("rng.draws", z, g["cfm_noise_z"], case=case)

    # The contract, draw by draw, on a copy of the stream.
    probe = torch.Generator().manual_seed(777)
    probe.set_state(gen.get_state())
    n = g["mel"].size(-1) * 480
    draws = hift.m_source.l_sin_gen.draw(1, n, torch.device("cpu"), probe)
    check("rng.draws", draws.phase, g["hift_sine_phase"], case=case)
    check("rng.draws", draws.noise, g["hift_sine_noise"], case=case)
    check("rng.draws", torch.randn(1, n, 1, generator=probe), g["hift_unused_noise"], case=case)

    wav, source = hift.inference(g["mel"], generator=gen)
    assert torch.equal(gen.get_state(), probe.get_state())
    check("hift.source", source, g["hift_source"], case=case)
    assert torch.equal(wav, captured(golden)["wav"])


@pytest.mark.parametrize("golden", golden_params())
def test_voiced_source(hift, golden) -> None:
    v = _golden(golden, "hift_voiced")
    f0 = v["f0_mel_rate"][:, None, :].repeat_interleave(480, dim=-1)
    with torch.inference_mode():
        source, uv = hift.m_source(f0, draws=SourceDraws(v["sine_phase"], v["sine_noise"]))
    assert torch.equal(uv.transpose(1, 2), v["uv"])
    case = golden_id(golden)
    check("hift.source", source, v["source"], case=case)
    assert v["uv"].sum() > 0 and source.abs().max() > 0.05

    with torch.inference_mode():
        gen_source, _ = hift.m_source(f0, generator=torch.Generator().manual_seed(99))
    check("hift.source", gen_source, v["source"], case=case)


@pytest.mark.parametrize("golden", golden_params())
def test_voiced_decode(hift, golden) -> None:
    v = _golden(golden, "hift_voiced")
    with torch.inference_mode():
        wav = hift.decode(v["mel"], v["source"])
    check("hift.wav", wav, v["wav_decode"], case=golden_id(golden))


# ------------------------------------------------------------------------------------------------ mutants
FIRST = golden_params()[:1]


@pytest.mark.parametrize("golden", FIRST)
def test_f0_check_catches_a_weight_and_an_activation(hift, golden, monkeypatch) -> None:
    g = _golden(golden, "s3gen")
    name = "condnet.4.parametrizations.weight.original0"  # the weight-norm gain g of the third convolution
    with perturbed(hift.f0_predictor, name), torch.inference_mode():
        f0 = hift.f0_predictor(g["mel"])
    assert_caught("hift.f0", f0, g["hift_f0"], mutant=f"hift f0: {name} x (1+1e-3)")
    monkeypatch.setattr(hift.f0_predictor.condnet, "3", torch.nn.SELU())  # ELU with SELU's scales
    with torch.inference_mode():
        f0 = hift.f0_predictor(g["mel"])
    assert_caught("hift.f0", f0, g["hift_f0"], mutant="hift f0: SELU for ELU")


@pytest.mark.parametrize("golden", FIRST)
def test_source_check_catches_a_perturbed_weight(hift, golden) -> None:
    v = _golden(golden, "hift_voiced")
    f0 = v["f0_mel_rate"][:, None, :].repeat_interleave(480, dim=-1)
    with perturbed(hift, "m_source.l_linear.weight"), torch.inference_mode():
        source, _ = hift.m_source(f0, draws=SourceDraws(v["sine_phase"], v["sine_noise"]))
    assert_caught("hift.source", source, v["source"], mutant="hift source: l_linear x (1+1e-3)")


def _decode(hift, g) -> torch.Tensor:
    """conv_post's output for the fixture's mel and excitation."""
    with torch.inference_mode():
        return hift.decode_spectrum(g["mel"], g["hift_source"])


@pytest.mark.parametrize("golden", FIRST)
def test_conv_post_check_catches_a_snake_alpha_and_a_leaky_relu_slope(hift, golden, monkeypatch) -> None:
    g = _golden(golden, "s3gen")
    name = "resblocks.4.activations1.1.alpha"
    with perturbed(hift, name):
        out = _decode(hift, g)
    assert_caught("hift.conv_post", out, g["hift_conv_post_out"], mutant=f"hift: {name} x (1+1e-3)")

    # lrelu_slope (0.1) before conv_post, where the reference uses leaky_relu's default 0.01
    shim = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    shim.leaky_relu = lambda x, negative_slope=0.1: F.leaky_relu(x, negative_slope)
    monkeypatch.setattr(hift_module, "F", shim)
    assert_caught("hift.conv_post", _decode(hift, g), g["hift_conv_post_out"], mutant="hift: leaky_relu slope 0.1")


@pytest.mark.parametrize("golden", FIRST)
def test_istft_and_wav_checks_catch_a_wrong_window_and_weight(hift, golden, monkeypatch) -> None:
    g = _golden(golden, "s3gen")
    name = "ups.1.parametrizations.weight.original0"
    with perturbed(hift, name), torch.inference_mode():
        wav = hift.decode(g["mel"], g["hift_source"])
    assert_caught("hift.wav", wav, g["hift_wav_before_trim_fade"], mutant=f"hift wav: {name} x (1+1e-3)")

    monkeypatch.setattr(HiFTGenerator, "_window", lambda self, device, dtype: torch.hamming_window(16, dtype=dtype))
    with torch.inference_mode():
        wav = hift.istft(g["hift_conv_post_out"])
    assert_caught("hift.istft", wav, g["hift_istft_out_before_clamp"], mutant="hift istft: hamming")
