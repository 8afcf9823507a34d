"""Audio front ends on the seed-0 full-size checkpoints against the reference's golden `audio_frontends` fixture.

Covers what `prepare_conditionals` / `embed_ref` compute from a reference clip: soxr and torchaudio-style 16 kHz
signals, the voice encoder (trim, mel, embedding), the S3 tokenizer (log-mel, tokens), S3Gen's 24 kHz mel and
the CAMPPlus x-vector. Float tensors go through the shared parity metric (tests/parity.py: error against the
tensor's scale, bounded by float32 rounding per stage; log spectra compared as power/magnitude, frame by frame);
tokens and trimmed audio are exact. The mutation tests at the end show each check fails on a wrong window, a
perturbed weight, a changed normalisation epsilon or a swapped activation.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

import librosa
import numpy as np
import pytest
import soxr
import torch
from parity import assert_caught, check, perturbed, power_of_log
from safetensors.torch import load_file
from support.paths import golden_id, golden_params
from torch import nn

import chatterbox_vllm.audio.kaldi as kaldi_module
import chatterbox_vllm.audio.mel as mel_module
import chatterbox_vllm.audio.resample as resample_module
from chatterbox_vllm.audio.io import load_audio
from chatterbox_vllm.audio.mel import s3_log_mel_spectrogram, s3gen_mel_spectrogram
from chatterbox_vllm.audio.resample import resample_sinc_hann, resample_soxr_hq
from chatterbox_vllm.checkpoint.weights import load_strict, read_state_dict
from chatterbox_vllm.models.s3gen.campplus import CAMPPlus
from chatterbox_vllm.models.s3tokenizer import S3TokenizerV2
from chatterbox_vllm.models.voice_encoder import load_voice_encoder

T3_PROMPT_SAMPLES = 6 * 16000
T3_PROMPT_TOKENS = 150
S3GEN_REF_SAMPLES = 10 * 24000


def _golden(directory: Path | None) -> dict[str, torch.Tensor]:
    path = directory / "audio_frontends.safetensors" if directory else None
    if path is None or not path.is_file():
        pytest.skip("no audio_frontends fixture")
    return load_file(str(path))


def s3tok_power(log_mel: torch.Tensor) -> torch.Tensor:
    """The S3 tokenizer's mel power behind its `(log10(P) + 4) / 4`."""
    return power_of_log(log_mel, base=10.0, scale=4.0, offset=4.0)


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def voice_encoder(english_full_checkpoint):
    return load_voice_encoder(english_full_checkpoint / "ve.safetensors")


@pytest.fixture(scope="module")
def s3gen_state(english_full_checkpoint):
    return read_state_dict(english_full_checkpoint / "s3gen.safetensors")


@pytest.fixture(scope="module")
def tokenizer(s3gen_state):
    model = S3TokenizerV2()
    # s3gen.safetensors lacks `tokenizer.window`; the reference loads it with strict=False and keeps hann(400).
    load_strict(model, _sub_state(s3gen_state, "tokenizer."), "s3gen.safetensors", may_be_absent=("window",))
    return model.eval()


@pytest.fixture(scope="module")
def campplus(s3gen_state):
    model = CAMPPlus()
    load_strict(model, _sub_state(s3gen_state, "speaker_encoder."), "s3gen.safetensors")
    return model.eval()


@pytest.mark.parametrize("golden_dir", golden_params())
def test_soxr_16k_and_wav_loading(golden_dir):
    g = _golden(golden_dir)
    wav_16k = resample_soxr_hq(g["wav_24k"].numpy(), 24000, 16000)
    check("audio.soxr_16k", torch.from_numpy(wav_16k), g["wav_16k"], case=golden_id(golden_dir))
    ref_wav = golden_dir / "ref_3s_24k.wav"
    if ref_wav.is_file():  # prepare_conditionals' input file: librosa.load at 24 kHz is the identity here
        np.testing.assert_array_equal(load_audio(ref_wav, 24000), g["wav_24k"].numpy())


@pytest.mark.parametrize("golden_dir", golden_params())
def test_voice_encoder(golden_dir, voice_encoder):
    g = _golden(golden_dir)
    wav_16k = g["wav_16k"].numpy()
    case = golden_id(golden_dir)
    trimmed = voice_encoder.trim(wav_16k)
    np.testing.assert_array_equal(trimmed, g["ve_trimmed_wav_16k"].numpy())  # a slice of the input
    mel = voice_encoder.mel(trimmed)
    check("ve.mel", torch.from_numpy(mel), g["ve_mel"], case=case)
    emb = voice_encoder.embeds_from_wavs([wav_16k], sample_rate=16000)
    assert emb.shape == (1, 256) and emb.dtype == np.float32
    check("ve.embedding", torch.from_numpy(emb), g["ve_embedding"], case=case)
    # prepare_conditionals averages the (single) utterance embedding
    speaker = torch.from_numpy(emb).mean(dim=0, keepdim=True)
    check("ve.embedding", speaker, g["prepare_conditionals_t3_speaker_emb"], case=case)


@pytest.mark.parametrize("golden_dir", golden_params())
def test_s3_tokenizer(golden_dir, tokenizer):
    g = _golden(golden_dir)
    wav_16k = g["wav_16k"]
    log_mel = tokenizer.log_mel_spectrogram(wav_16k[None])[0]
    check("s3tok.log_mel", s3tok_power(log_mel), s3tok_power(g["s3tok_log_mel"]), case=golden_id(golden_dir))
    tokens, lens = tokenizer.forward([wav_16k])
    assert tokens.dtype == torch.int64 and torch.equal(tokens, g["s3tok_tokens"])
    assert torch.equal(lens, g["s3tok_token_lens"])
    tokens, _ = tokenizer.forward([wav_16k.numpy()], max_len=T3_PROMPT_TOKENS)
    assert torch.equal(tokens, g["s3tok_tokens_max_len_150"])
    # T3's speech prompt: the first 6 s of the soxr 16 kHz signal, at most 150 tokens
    tokens, _ = tokenizer.forward([wav_16k[:T3_PROMPT_SAMPLES]], max_len=T3_PROMPT_TOKENS)
    assert torch.equal(tokens, g["prepare_conditionals_t3_cond_prompt_speech_tokens"])


@pytest.mark.parametrize("golden_dir", golden_params())
def test_embed_ref_frontends(golden_dir, tokenizer, campplus):
    g = _golden(golden_dir)
    wav_24k = g["wav_24k"][:S3GEN_REF_SAMPLES][None]
    case = golden_id(golden_dir)
    mel = s3gen_mel_spectrogram(wav_24k)
    for name in ("s3gen_mel_24k", "embed_ref_prompt_feat", "prepare_conditionals_gen_prompt_feat"):
        want = g[name] if name == "s3gen_mel_24k" else g[name].transpose(1, 2)  # prompt_feat is frames first
        check("s3gen.mel_24k", power_of_log(mel), power_of_log(want), case=case)

    wav_16k = resample_sinc_hann(wav_24k, 24000, 16000)  # embed_ref uses torchaudio's resampler, not soxr
    assert wav_16k.shape == (1, 48000)
    tokens, lens = tokenizer.forward(list(wav_16k))
    assert torch.equal(tokens, g["embed_ref_prompt_token"])
    assert torch.equal(tokens, g["prepare_conditionals_gen_prompt_token"])
    assert torch.equal(lens, g["embed_ref_prompt_token_len"])
    # The two 16 kHz signals differ, and so do their tokens (a reference fact the fixture records).
    assert not torch.equal(g["embed_ref_prompt_token"], g["s3tok_tokens"])

    emb = campplus.inference(wav_16k)
    assert emb.shape == (1, 192)
    check("campplus.embedding", emb, g["embed_ref_embedding"], case=case)
    check("campplus.embedding", emb, g["prepare_conditionals_gen_embedding"], case=case)


# ------------------------------------------------------------------------------------------------ mutants
# Each check must fail when one thing is wrong: a window, one weight tensor scaled by 1 + 1e-3, a normalisation
# epsilon, an activation. Run on the first golden directory (ours when present).
FIRST = golden_params()[:1]


@pytest.mark.parametrize("golden_dir", FIRST)
def test_mel_checks_catch_a_wrong_window(golden_dir, tokenizer, voice_encoder, monkeypatch):
    g = _golden(golden_dir)
    log_mel = s3_log_mel_spectrogram(g["wav_16k"][None], tokenizer._mel_filters, torch.hamming_window(400))[0]
    assert_caught("s3tok.log_mel", s3tok_power(log_mel), s3tok_power(g["s3tok_log_mel"]), mutant="s3tok: hamming")

    with monkeypatch.context() as m:
        m.setattr(torch, "hann_window", torch.hamming_window)
        mel = s3gen_mel_spectrogram(g["wav_24k"][:S3GEN_REF_SAMPLES][None])
    assert_caught("s3gen.mel_24k", power_of_log(mel), power_of_log(g["s3gen_mel_24k"]), mutant="s3gen mel: hamming")

    shim = types.SimpleNamespace(stft=functools.partial(librosa.stft, window="hamming"), filters=librosa.filters)
    with monkeypatch.context() as m:
        m.setattr(mel_module, "librosa", shim)
        mel = voice_encoder.mel(g["ve_trimmed_wav_16k"].numpy())
    assert_caught("ve.mel", torch.from_numpy(mel), g["ve_mel"], mutant="ve mel: hamming")


@pytest.mark.parametrize("golden_dir", FIRST)
def test_embedding_checks_catch_one_perturbed_weight(golden_dir, voice_encoder, campplus):
    g = _golden(golden_dir)
    with perturbed(voice_encoder, "lstm.weight_hh_l1"):
        emb = voice_encoder.embeds_from_wavs([g["wav_16k"].numpy()], sample_rate=16000)
    assert_caught("ve.embedding", torch.from_numpy(emb), g["ve_embedding"], mutant="ve: lstm.weight_hh_l1 x (1+1e-3)")

    wav_16k = resample_sinc_hann(g["wav_24k"][:S3GEN_REF_SAMPLES][None], 24000, 16000)
    name = "xvector.block2.tdnnd12.cam_layer.linear_local.weight"
    with perturbed(campplus, name):
        emb = campplus.inference(wav_16k)
    assert_caught("campplus.embedding", emb, g["embed_ref_embedding"], mutant=f"campplus: {name} x (1+1e-3)")


@pytest.mark.parametrize("golden_dir", FIRST)
def test_campplus_check_catches_a_batchnorm_epsilon(golden_dir, campplus, monkeypatch):
    """BatchNorm eps 1e-5 -> 1e-4 (running_var is 1 in the random checkpoint: each layer scales by ~4.5e-5)."""
    g = _golden(golden_dir)
    wav_16k = resample_sinc_hann(g["wav_24k"][:S3GEN_REF_SAMPLES][None], 24000, 16000)
    for module in campplus.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            monkeypatch.setattr(module, "eps", 1e-4)
    emb = campplus.inference(wav_16k)
    assert_caught("campplus.embedding", emb, g["embed_ref_embedding"], mutant="campplus: BatchNorm eps 1e-4")


@pytest.mark.parametrize("golden_dir", FIRST)
def test_campplus_check_catches_a_wrong_fbank_window(golden_dir, campplus, monkeypatch):
    """Kaldi's plain Hann window where its default (and CAMPPlus's training) is Povey's (Hann^0.85)."""
    g = _golden(golden_dir)
    wav_16k = resample_sinc_hann(g["wav_24k"][:S3GEN_REF_SAMPLES][None], 24000, 16000)
    monkeypatch.setattr(kaldi_module, "_povey_window", lambda size: torch.hann_window(size, periodic=False))
    emb = campplus.inference(wav_16k)
    assert_caught("campplus.embedding", emb, g["embed_ref_embedding"], mutant="kaldi fbank: hann for povey window")


@pytest.mark.parametrize("golden_dir", FIRST)
def test_soxr_check_catches_a_lower_quality(golden_dir, monkeypatch):
    """soxr's "MQ" preset where librosa (and the reference) use "HQ"."""
    g = _golden(golden_dir)
    shim = types.SimpleNamespace(resample=lambda x, i, o, quality=None: soxr.resample(x, i, o, quality="soxr_mq"))
    monkeypatch.setattr(resample_module, "soxr", shim)
    wav_16k = resample_soxr_hq(g["wav_24k"].numpy(), 24000, 16000)
    assert_caught("audio.soxr_16k", torch.from_numpy(wav_16k), g["wav_16k"], mutant="soxr: MQ for HQ")


@pytest.mark.parametrize("golden_dir", FIRST)
def test_token_check_catches_a_wrong_activation(golden_dir, tokenizer, monkeypatch):
    """SiLU instead of GELU in the tokenizer's feed-forward layers changes the tokens (compared exactly)."""
    g = _golden(golden_dir)
    for block in tokenizer.encoder.blocks:
        monkeypatch.setattr(block.mlp, "1", nn.SiLU())
    tokens, _ = tokenizer.forward([g["wav_16k"]])
    assert tokens.shape == g["s3tok_tokens"].shape and not torch.equal(tokens, g["s3tok_tokens"])
