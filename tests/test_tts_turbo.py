"""Chatterbox-Turbo end to end on its tiny random checkpoint: GPT-2 text with tags, GPT-2 T3 without CFG, the
mean-flow S3Gen with the appended silence, and Turbo's voice-clip rules (loudness, 5 s minimum)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from chatterbox_vllm.checkpoint.layout import TURBO
from chatterbox_vllm.conditioning import VoiceCloneError
from chatterbox_vllm.text.normalize import punc_norm
from chatterbox_vllm.tts import S3GEN_SILENCE_TOKEN, SAMPLES_PER_TOKEN, ChatterboxTTS, VocodeJob

from test_tts import chirp

GPT2_TAIL_SILENCE_TOKENS = 3  # the reference's S3GEN_SIL tokens after the speech


def decoded_samples(tts: ChatterboxTTS, tokens: int) -> int:
    """S3Gen's output length: 2 mel frames per token of prompt and piece, minus the prompt's mel frames (the
    built-in voice's prompt mel has 2 x its tokens + 1 frames), 480 samples a frame."""
    gen = tts.default_conds.gen
    frames = 2 * (gen["prompt_token"].shape[-1] + tokens) - gen["prompt_feat"].shape[1]
    return frames * SAMPLES_PER_TOKEN // 2


@pytest.fixture(scope="module")
def turbo(turbo_tiny_checkpoint: Path) -> ChatterboxTTS:
    return ChatterboxTTS.from_local(turbo_tiny_checkpoint, device="cpu", engine="torch")


@pytest.fixture(scope="module")
def english(english_tiny_checkpoint: Path) -> ChatterboxTTS:
    return ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")


def test_turbo_loads_its_own_files_and_models(turbo: ChatterboxTTS) -> None:
    assert turbo.layout == TURBO and turbo.family.tail_tokens == GPT2_TAIL_SILENCE_TOKENS
    assert not turbo.family.multilingual
    assert turbo.config.t3.backbone == "gpt2" and turbo.config.s3gen.meanflow and turbo.config.s3gen.flow.n_timesteps == 2
    assert turbo.default_conds is not None
    assert turbo.default_conds.t3.cond_prompt_speech_tokens.shape[-1] == 375


def test_turbo_reads_tags_as_tokens_and_other_models_drop_them(
    turbo: ChatterboxTTS, english: ChatterboxTTS, caplog: pytest.LogCaptureFixture
) -> None:
    ids = turbo.text_tokens("well [laugh] that was fun").tolist()
    assert turbo.tokenizer.token_to_id("[laugh]") in ids  # one token, no start/stop markers around the text
    assert ids == turbo.tokenizer.encode(punc_norm("well [laugh] that was fun", turbo=True))  # no markers
    with caplog.at_level(logging.WARNING):
        stripped = english.text_tokens("well [laugh] that was fun").tolist()
    assert stripped == english.text_tokens("well that was fun").tolist()
    assert "removed [laugh]" in caplog.text
    with pytest.raises(ValueError, match="nothing but paralinguistic tags"):
        english.text_tokens("[sigh] [laugh]")


def test_turbo_sampling_defaults_and_ignored_settings(turbo: ChatterboxTTS, english: ChatterboxTTS) -> None:
    params = turbo.sampling_params(cfg_weight=0.5, min_p=0.1, temperature=0.5)
    assert (params.top_k, params.top_p, params.cfg_weight, params.min_p, params.temperature) == (1000, 0.95, 0, 0, 0.5)
    assert english.sampling_params().cfg_weight == 0.5 and english.sampling_params().top_k == 0
    with pytest.raises(ValueError, match="top_k"):
        english.sampling_params(top_k=50)


def test_turbo_generate_appends_silence_and_keeps_it(turbo: ChatterboxTTS) -> None:
    tokens = turbo.engine.generate(turbo.text_tokens("Hello [laugh] world."), turbo.default_conds.t3,
                                   turbo.sampling_params(seed=0, max_new_tokens=20))  # fmt: skip
    real = [t for t in tokens if t < 6561]
    assert turbo.s3gen_tokens(tokens) == real + [S3GEN_SILENCE_TOKEN] * GPT2_TAIL_SILENCE_TOKENS
    wav = turbo.generate("Hello [laugh] world.", seed=0, max_new_tokens=20)
    assert wav.dtype == np.float32 and np.isfinite(wav).all() and np.abs(wav).max() > 0
    assert len(wav) == decoded_samples(turbo, len(real) + GPT2_TAIL_SILENCE_TOKENS)  # nothing cut
    again = turbo.generate("Hello [laugh] world.", seed=0, max_new_tokens=20)
    np.testing.assert_array_equal(wav, again)


def test_turbo_batched_vocodes_equal_each_alone(turbo: ChatterboxTTS) -> None:
    g = torch.Generator().manual_seed(0)
    jobs = [VocodeJob(torch.randint(0, 6561, (n,), generator=g).tolist(), turbo.default_conds, seed=i)
            for i, n in enumerate((12, 30, 7))]  # fmt: skip
    batched = turbo.vocode_batch(jobs)
    for job, wav in zip(jobs, batched, strict=True):
        alone = turbo.vocode(job.tokens, job.conds, seed=job.seed)
        assert len(wav) == len(alone) == decoded_samples(turbo, len(job.tokens) + GPT2_TAIL_SILENCE_TOKENS)
        np.testing.assert_allclose(wav, alone, atol=2e-4)


def test_turbo_voice_clips_are_loudness_normalised_and_at_least_5_s(turbo: ChatterboxTTS) -> None:
    import io

    import soundfile

    def wav_bytes(wave: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        soundfile.write(buffer, wave, 24_000, format="WAV", subtype="FLOAT")
        return buffer.getvalue()

    clip = chirp(8.0)
    loud = turbo.prepare_conditionals(wav_bytes(clip))
    quiet = turbo.prepare_conditionals(wav_bytes(clip * 0.05))  # 26 dB quieter: the same after normalisation
    assert loud.t3.cond_prompt_speech_tokens.shape[-1] == 8 * 25  # 15 s of prompt at most; the clip has 8
    torch.testing.assert_close(quiet.t3.speaker_emb, loud.t3.speaker_emb, atol=1e-4, rtol=0)
    torch.testing.assert_close(quiet.gen["prompt_feat"], loud.gen["prompt_feat"], atol=1e-3, rtol=0)
    with pytest.raises(VoiceCloneError, match="at least 5.0 s"):
        turbo.prepare_conditionals(wav_bytes(chirp(4.0)))
