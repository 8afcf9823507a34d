"""Voice encoder, S3 tokenizer and CAMPPlus: state dicts vs the published manifests, configs, tiny sizes, .pt files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.paths import manifest_path

from chatterbox_vllm.checkpoint.weights import CheckpointError, load_strict, read_state_dict
from chatterbox_vllm.models.s3gen.campplus import CAMPPlus, CAMPPlusConfig
from chatterbox_vllm.models.s3tokenizer import S3TokenizerConfig, S3TokenizerV2
from chatterbox_vllm.models.voice_encoder import VoiceEncoder, VoiceEncoderConfig, load_voice_encoder


def _manifest(name: str, prefix: str = "") -> list[tuple[str, tuple[int, ...], str]]:
    entries = json.loads(manifest_path(name).read_text())
    return [(e["name"][len(prefix) :], tuple(e["shape"]), e["dtype"]) for e in entries if e["name"].startswith(prefix)]


def _state(module: torch.nn.Module, prefix: str = "") -> list[tuple[str, tuple[int, ...], str]]:
    return [(prefix + k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


def _meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def test_voice_encoder_state_dict_matches_manifests():
    state = _state(_meta(VoiceEncoder, VoiceEncoderConfig()))
    assert state == _manifest("ve.safetensors.json")
    assert state == _manifest("ve.pt.json")


def test_s3_tokenizer_state_dict_matches_manifests():
    state = _state(_meta(S3TokenizerV2, S3TokenizerConfig()))
    assert state == _manifest("s3gen.pt.json", "tokenizer.")
    # The published safetensors omit only the constant Hann window.
    assert [s for s in state if s[0] != "window"] == _manifest("s3gen.safetensors.json", "tokenizer.")


def test_campplus_state_dict_matches_manifests():
    state = _state(_meta(CAMPPlus, CAMPPlusConfig()))
    assert state == _manifest("s3gen.pt.json", "speaker_encoder.")
    assert state == _manifest("s3gen.safetensors.json", "speaker_encoder.")


def test_s3_tokenizer_constant_buffers_are_bit_identical():
    fixed = load_file(str(manifest_path("s3gen_fixed_buffers.safetensors")))
    for config in (S3TokenizerConfig(), S3TokenizerConfig.tiny()):
        buffers = S3TokenizerV2(config).state_dict()
        assert torch.equal(buffers["_mel_filters"], fixed["tokenizer._mel_filters"])
        assert torch.equal(buffers["window"], fixed["tokenizer.window"])


@pytest.mark.parametrize(
    "config_cls", [VoiceEncoderConfig, S3TokenizerConfig, CAMPPlusConfig], ids=["ve", "s3tok", "campplus"]
)
@pytest.mark.parametrize("size", ["full", "tiny"])
def test_configs_round_trip_through_json(config_cls, size):
    config = config_cls() if size == "full" else config_cls.tiny()
    restored = config_cls.from_dict(json.loads(json.dumps(dataclasses.asdict(config))))
    assert restored == config
    with pytest.raises(ValueError):
        config_cls.from_dict({**dataclasses.asdict(config), "bogus": 1})


def test_tiny_configs_keep_interfaces():
    ve, tok, cam = VoiceEncoderConfig.tiny(), S3TokenizerConfig.tiny(), CAMPPlusConfig.tiny()
    assert ve.embedding_size == 256 and ve.num_mels == 40 and ve.sample_rate == 16000
    assert tok.n_mels == 128 and tok.codebook_size == 6561
    assert cam.embedding_size == 192 and cam.feat_dim == 80


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(r / p[0].numel() ** 0.5 if p.dim() > 1 else 1 + 0.02 * r)
    return module.eval()


def test_tiny_models_run_end_to_end():
    rng = np.random.default_rng(0)
    wav = (0.3 * np.sin(np.arange(32000) * 0.05) + 0.02 * rng.standard_normal(32000)).astype(np.float32)

    ve = _randomize(VoiceEncoder(VoiceEncoderConfig.tiny()))
    emb = ve.embeds_from_wavs([wav, wav[:20000]], sample_rate=16000)
    assert emb.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        ve.embeds_from_wavs([wav], sample_rate=24000)

    tok = _randomize(S3TokenizerV2(S3TokenizerConfig.tiny()))
    tokens, lens = tok.forward([torch.from_numpy(wav), torch.from_numpy(wav[:16000])])
    assert tokens.shape == (2, 50) and lens.tolist() == [50, 25]
    assert tokens.dtype == torch.int64 and int(tokens.min()) >= 0 and int(tokens.max()) < 6561
    # Positions past a row's length hold whatever the padded frames quantise to (the reference does not zero
    # them); callers use the lengths.
    # A batch row equals that waveform tokenised alone: padding is masked out.
    alone, _ = tok.forward([torch.from_numpy(wav[:16000])])
    assert torch.equal(alone[0], tokens[1, :25])
    short, short_lens = tok.forward([torch.from_numpy(wav)], max_len=10)
    assert short.shape == (1, 10) and short_lens.tolist() == [10]

    cam = _randomize(CAMPPlus(CAMPPlusConfig.tiny()))
    xvec = cam.inference(torch.from_numpy(wav)[None])
    assert xvec.shape == (1, 192) and torch.isfinite(xvec).all()


def test_s3_tokenizer_long_input_uses_overlapping_windows():
    """Over 30 s of mel frames the input is tokenised in 30 s windows every 26 s, joined at overlap midpoints."""
    tok = _randomize(S3TokenizerV2(S3TokenizerConfig.tiny()))
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(1, 128, 3400, generator=g)
    tokens, lens = tok.quantize(mel, torch.tensor([3400]))
    first, _ = tok.quantize(mel[..., :3000], torch.tensor([3000]))
    second, _ = tok.quantize(torch.nn.functional.pad(mel[..., 2600:], (0, 2200)), torch.tensor([800]))
    expected = torch.cat([first[0, :700], second[0, 50:200]])
    assert lens.tolist() == [850] and torch.equal(tokens[0], expected)


@pytest.fixture(scope="module")
def multilingual_state(multilingual_full_checkpoint):
    return read_state_dict(multilingual_full_checkpoint / "s3gen.pt")


def test_multilingual_pt_files_load_strictly(multilingual_full_checkpoint, english_full_checkpoint, multilingual_state):
    ve_pt = load_voice_encoder(multilingual_full_checkpoint / "ve.pt")
    ve_st = load_voice_encoder(english_full_checkpoint / "ve.safetensors")
    # Same seed and names: the random ve.pt holds the same tensors as ve.safetensors.
    for (k, a), (_, b) in zip(ve_pt.state_dict().items(), ve_st.state_dict().items()):
        assert torch.equal(a, b), k

    tok_state = {k[len("tokenizer.") :]: v for k, v in multilingual_state.items() if k.startswith("tokenizer.")}
    load_strict(S3TokenizerV2(), tok_state, "s3gen.pt")  # s3gen.pt holds the window: no tensor may be absent
    prefix = "speaker_encoder."
    cam_state = {k[len(prefix) :]: v for k, v in multilingual_state.items() if k.startswith(prefix)}
    load_strict(CAMPPlus(), cam_state, "s3gen.pt")

    missing_window = {k: v for k, v in tok_state.items() if k != "window"}
    with pytest.raises(CheckpointError, match="window"):
        load_strict(S3TokenizerV2(), missing_window, "s3gen.pt")
