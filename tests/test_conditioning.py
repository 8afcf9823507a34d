"""Voice conditionals from a reference clip: parity with the reference's prepare_conditionals()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatterbox_vllm.checkpoint.config import ModelConfig
from chatterbox_vllm.conditioning import Conditionals, VoiceConditioner
from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.voice_encoder import load_voice_encoder
from parity import check, power_of_log
from support.paths import golden_id, golden_params


@pytest.fixture(scope="module")
def conditioner(english_full_checkpoint: Path) -> VoiceConditioner:
    config = ModelConfig.published("english")
    ve = load_voice_encoder(english_full_checkpoint / "ve.safetensors", config.voice_encoder).eval()
    s3gen = load_s3gen(english_full_checkpoint / "s3gen.safetensors", config.s3gen).eval()
    return VoiceConditioner(ve, s3gen, prompt_tokens=config.t3.speech_cond_prompt_len, device=torch.device("cpu"))


@pytest.mark.parametrize("golden", golden_params())
def test_prepare_conditionals_matches_reference(conditioner: VoiceConditioner, golden: Path) -> None:
    want = load_file(golden / "audio_frontends.safetensors")
    got = conditioner.from_audio(golden / "ref_3s_24k.wav", exaggeration=0.5)

    case = golden_id(golden)
    check("ve.embedding", got.t3.speaker_emb, want["prepare_conditionals_t3_speaker_emb"], case=case)
    prompt = got.t3.cond_prompt_speech_tokens
    ref_prompt = want["prepare_conditionals_t3_cond_prompt_speech_tokens"]
    assert prompt.shape == ref_prompt.shape
    assert (prompt != ref_prompt).sum() <= 1, "S3 prompt tokens differ from the reference"
    assert (got.gen["prompt_token"] != want["prepare_conditionals_gen_prompt_token"]).sum() <= 1
    feat, want_feat = got.gen["prompt_feat"], want["prepare_conditionals_gen_prompt_feat"]  # [1, frames, 80]
    check("s3gen.mel_24k", power_of_log(feat.transpose(1, 2)), power_of_log(want_feat.transpose(1, 2)), case=case)
    check("campplus.embedding", got.gen["embedding"], want["prepare_conditionals_gen_embedding"], case=case)
    assert float(got.t3.emotion_adv.reshape(-1)[0]) == 0.5


def test_conds_file_roundtrip(english_full_checkpoint: Path, tmp_path: Path) -> None:
    conds = Conditionals.load(english_full_checkpoint / "conds.pt")
    assert conds.t3.speaker_emb.shape == (1, 256)
    assert conds.gen["prompt_token"].shape[1] * 2 + 1 == conds.gen["prompt_feat"].shape[1]
    conds.save(tmp_path / "conds.pt")
    again = Conditionals.load(tmp_path / "conds.pt")
    assert torch.equal(again.t3.cond_prompt_speech_tokens, conds.t3.cond_prompt_speech_tokens)
    assert torch.equal(again.gen["prompt_feat"], conds.gen["prompt_feat"])
    louder = conds.with_exaggeration(0.9)
    assert float(louder.t3.emotion_adv.reshape(-1)[0]) == pytest.approx(0.9)
    assert float(conds.t3.emotion_adv.reshape(-1)[0]) == pytest.approx(0.5), "the cached voice must not change"
