"""Audio front ends on the seed-0 full-size checkpoints against the reference's golden `audio_frontends` fixture.

Covers what `prepare_conditionals` / `embed_ref` compute from a reference clip: soxr and torchaudio-style 16 kHz
signals, the voice encoder (trim, mel, embedding), the S3 tokenizer (log-mel, tokens), S3Gen's 24 kHz mel and
the CAMPPlus x-vector. Suggested tolerances (fp32): mels 1e-4 relative, embeddings 1e-4 absolute, tokens exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import golden_params
from safetensors.torch import load_file

from chatterbox_vllm.audio.io import load_audio
from chatterbox_vllm.audio.mel import s3gen_mel_spectrogram
from chatterbox_vllm.audio.resample import resample_sinc_hann, resample_soxr_hq
from chatterbox_vllm.checkpoint.weights import load_strict, read_state_dict
from chatterbox_vllm.models.s3gen.campplus import CAMPPlus
from chatterbox_vllm.models.s3tokenizer import S3TokenizerV2
from chatterbox_vllm.models.voice_encoder import load_voice_encoder

MEL_RTOL = 1e-4
EMB_ATOL = 1e-4
T3_PROMPT_SAMPLES = 6 * 16000
T3_PROMPT_TOKENS = 150
S3GEN_REF_SAMPLES = 10 * 24000


def _golden(directory: Path | None) -> dict[str, torch.Tensor]:
    path = directory / "audio_frontends.safetensors" if directory else None
    if path is None or not path.is_file():
        pytest.skip("no audio_frontends fixture")
    return load_file(str(path))


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = torch.as_tensor(ours).double(), torch.as_tensor(ref).double()
    return float(((ours - ref).abs() / ref.abs().clamp(min=1e-3)).max())


def _abs_err(ours, ref) -> float:
    return float((torch.as_tensor(ours).double() - torch.as_tensor(ref).double()).abs().max())


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
    assert wav_16k.shape == tuple(g["wav_16k"].shape)
    assert _abs_err(wav_16k, g["wav_16k"]) <= 1e-6
    ref_wav = golden_dir / "ref_3s_24k.wav"
    if ref_wav.is_file():  # prepare_conditionals' input file: librosa.load at 24 kHz is the identity here
        np.testing.assert_array_equal(load_audio(ref_wav, 24000), g["wav_24k"].numpy())


@pytest.mark.parametrize("golden_dir", golden_params())
def test_voice_encoder(golden_dir, voice_encoder):
    g = _golden(golden_dir)
    wav_16k = g["wav_16k"].numpy()
    trimmed = voice_encoder.trim(wav_16k)
    assert trimmed.shape == tuple(g["ve_trimmed_wav_16k"].shape)
    assert _abs_err(trimmed, g["ve_trimmed_wav_16k"]) <= 1e-6
    mel = voice_encoder.mel(trimmed)
    assert mel.shape == tuple(g["ve_mel"].shape)
    assert _rel_err(mel, g["ve_mel"]) <= MEL_RTOL
    emb = voice_encoder.embeds_from_wavs([wav_16k], sample_rate=16000)
    assert emb.shape == (1, 256) and emb.dtype == np.float32
    assert _abs_err(emb, g["ve_embedding"]) <= EMB_ATOL
    # prepare_conditionals averages the (single) utterance embedding
    speaker = torch.from_numpy(emb).mean(dim=0, keepdim=True)
    assert _abs_err(speaker, g["prepare_conditionals_t3_speaker_emb"]) <= EMB_ATOL


@pytest.mark.parametrize("golden_dir", golden_params())
def test_s3_tokenizer(golden_dir, tokenizer):
    g = _golden(golden_dir)
    wav_16k = g["wav_16k"]
    log_mel = tokenizer.log_mel_spectrogram(wav_16k[None])[0]
    assert log_mel.shape == g["s3tok_log_mel"].shape
    assert _rel_err(log_mel, g["s3tok_log_mel"]) <= MEL_RTOL
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
    mel = s3gen_mel_spectrogram(wav_24k)
    assert mel.shape == g["s3gen_mel_24k"].shape
    assert _rel_err(mel, g["s3gen_mel_24k"]) <= MEL_RTOL
    assert _rel_err(mel.transpose(1, 2), g["embed_ref_prompt_feat"]) <= MEL_RTOL
    assert _rel_err(mel.transpose(1, 2), g["prepare_conditionals_gen_prompt_feat"]) <= MEL_RTOL

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
    assert _abs_err(emb, g["embed_ref_embedding"]) <= EMB_ATOL
    assert _abs_err(emb, g["prepare_conditionals_gen_embedding"]) <= EMB_ATOL
