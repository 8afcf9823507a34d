"""HiFT structure and behaviour without golden data: config round trip, the published tensor names, a tiny forward."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from support.paths import manifest_path

from chatterbox_vllm.models.s3gen.f0_predictor import ConvRNNF0Predictor, F0PredictorConfig
from chatterbox_vllm.models.s3gen.hift import HiFTConfig, HiFTGenerator, SourceDraws


def test_config_defaults_are_the_published_vocoder() -> None:
    cfg = HiFTConfig()
    assert cfg.sampling_rate == 24_000 and cfg.in_channels == 80
    assert cfg.upsample_rates == (8, 5, 3) and cfg.upsample_kernel_sizes == (16, 11, 7)
    assert (cfg.istft_n_fft, cfg.istft_hop_len) == (16, 4)
    assert cfg.num_harmonics == 9 and cfg.nsf_alpha == 0.1 and cfg.nsf_sigma == 0.003
    assert cfg.nsf_voiced_threshold == 10
    assert cfg.samples_per_frame == 480
    assert cfg.f0_predictor == F0PredictorConfig(in_channels=80, cond_channels=512, num_convs=5)


@pytest.mark.parametrize("cfg", [HiFTConfig(), HiFTConfig.tiny()], ids=["full", "tiny"])
def test_config_json_round_trip(cfg: HiFTConfig) -> None:
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples come back as lists
    assert HiFTConfig.from_dict(d) == cfg


def test_tiny_keeps_rates() -> None:
    tiny, full = HiFTConfig.tiny(), HiFTConfig()
    for name in ("sampling_rate", "in_channels", "upsample_rates", "istft_n_fft", "istft_hop_len", "nb_harmonics"):
        assert getattr(tiny, name) == getattr(full, name)
    assert tiny.base_channels < full.base_channels


def test_config_rejects_inconsistent_stages() -> None:
    with pytest.raises(ValueError):
        HiFTConfig(upsample_rates=(8, 5))
    with pytest.raises(ValueError):
        HiFTConfig.from_dict({"no_such_field": 1})


def test_state_dict_equals_manifest() -> None:
    """Names, order, shapes and dtypes of `mel2wav.*` in the published s3gen.safetensors."""
    entries = json.loads(manifest_path("s3gen.safetensors.json").read_text())
    want = [(e["name"], tuple(e["shape"]), e["dtype"]) for e in entries if e["name"].startswith("mel2wav.")]
    with torch.device("meta"):
        model = HiFTGenerator(HiFTConfig())
    got = [(f"mel2wav.{k}", tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert got == want
    assert len(want) == 328


@pytest.fixture(scope="module")
def tiny_model() -> HiFTGenerator:
    torch.manual_seed(0)
    return HiFTGenerator(HiFTConfig.tiny()).eval()


def test_tiny_forward_length_and_range(tiny_model: HiFTGenerator) -> None:
    mel = torch.randn(2, 80, 7, generator=torch.Generator().manual_seed(1)) - 5
    wav, source = tiny_model.inference(mel, generator=torch.Generator().manual_seed(2))
    assert wav.shape == (2, 7 * 480) and source.shape == (2, 1, 7 * 480)
    assert torch.isfinite(wav).all() and torch.isfinite(source).all()
    assert wav.abs().max() <= 0.99
    assert wav.std() > 0


def test_generator_makes_runs_reproducible(tiny_model: HiFTGenerator) -> None:
    mel = torch.randn(1, 80, 5, generator=torch.Generator().manual_seed(3))
    a, _ = tiny_model.inference(mel, generator=torch.Generator().manual_seed(7))
    b, _ = tiny_model.inference(mel, generator=torch.Generator().manual_seed(7))
    c, _ = tiny_model.inference(mel, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_draws_equal_injected_draws(tiny_model: HiFTGenerator) -> None:
    """Drawing from a generator and injecting the same values give the same output; the stream then continues
    after the third (unused) draw of [B, L, 1] values, as in the reference."""
    mel = torch.randn(2, 80, 4, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(11)
    wav, source = tiny_model.inference(mel, generator=gen)

    manual = torch.Generator().manual_seed(11)
    draws = tiny_model.m_source.l_sin_gen.draw(2, 4 * 480, torch.device("cpu"), manual)
    torch.randn(2, 4 * 480, 1, generator=manual)
    assert torch.equal(gen.get_state(), manual.get_state())
    assert draws.phase.shape == (2, 9, 1) and draws.phase.abs().max() <= torch.pi

    wav2, source2 = tiny_model.inference(mel, draws=SourceDraws(draws.phase, draws.noise))
    assert torch.equal(wav, wav2) and torch.equal(source, source2)


def test_cache_source_replaces_the_start(tiny_model: HiFTGenerator) -> None:
    mel = torch.randn(1, 80, 3, generator=torch.Generator().manual_seed(5))
    cache = torch.full((1, 1, 100), 0.25)
    _, source = tiny_model.inference(mel, cache_source=cache, generator=torch.Generator().manual_seed(6))
    _, plain = tiny_model.inference(mel, generator=torch.Generator().manual_seed(6))
    assert torch.equal(source[..., :100], cache)
    assert torch.equal(source[..., 100:], plain[..., 100:])


def test_voiced_source_is_periodic() -> None:
    """A constant voiced F0 gives a sine at that frequency plus little noise (read through harmonic 0 alone)."""
    torch.manual_seed(0)
    cfg = HiFTConfig.tiny()
    model = HiFTGenerator(cfg).eval()
    with torch.no_grad():
        model.m_source.l_linear.weight.zero_()
        model.m_source.l_linear.weight[0, 0] = 5.0
        model.m_source.l_linear.bias.zero_()
    f0 = torch.full((1, 1, 24_000), 200.0)
    source, uv = model.m_source(f0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(uv, torch.ones_like(uv))
    spectrum = torch.fft.rfft(source[0, 0]).abs()
    assert int(spectrum[1:].argmax()) + 1 == 200  # 1 Hz bins over one second
    harmonics = spectrum[200::200]
    assert harmonics.square().sum() > 0.9 * spectrum.square().sum()


def test_f0_predictor_is_non_negative() -> None:
    torch.manual_seed(0)
    model = ConvRNNF0Predictor(F0PredictorConfig.tiny())
    f0 = model(torch.randn(3, 80, 9))
    assert f0.shape == (3, 9) and (f0 >= 0).all()


def test_meta_build_then_load_runs() -> None:
    """The checkpoint generator's path: build on meta, materialise, load weights; no buffer is left empty."""
    cfg = HiFTConfig.tiny()
    torch.manual_seed(0)
    source = HiFTGenerator(cfg).eval()
    with torch.device("meta"):
        model = HiFTGenerator(cfg)
    model.to_empty(device="cpu")
    model.load_state_dict(source.state_dict())
    mel = torch.randn(1, 80, 3, generator=torch.Generator().manual_seed(1))
    a, _ = model.eval().inference(mel, generator=torch.Generator().manual_seed(2))
    b, _ = source.inference(mel, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
