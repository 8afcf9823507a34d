"""End-to-end ChatterboxTTS on tiny random checkpoints, and its error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from chatterbox_vllm.audio.io import AudioDecodeError
from chatterbox_vllm.checkpoint.weights import CheckpointError
from chatterbox_vllm.checkpoint.layout import CONFIG_FILE
from chatterbox_vllm.conditioning import VoiceCloneError
from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.text.languages import UnsupportedLanguageError
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.text.normalize import EmptyTextError
from chatterbox_vllm.tts import SAMPLES_PER_TOKEN, ChatterboxTTS


def chirp(seconds: float, sr: int = 24_000, seed: int = 7) -> np.ndarray:
    """A voiced-sounding test clip: a chirp with a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    wave = 0.4 * np.sin(2 * np.pi * (150 * t + 400 * t**2)) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def english(english_tiny_checkpoint: Path) -> ChatterboxTTS:
    return ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")


@pytest.fixture(scope="module")
def multilingual(multilingual_tiny_checkpoint: Path) -> ChatterboxTTS:
    return ChatterboxTTS.from_local(multilingual_tiny_checkpoint, device="cpu", engine="torch")


def test_english_generate_writes_playable_24k_wav(english: ChatterboxTTS, tmp_path: Path) -> None:
    wav = english.generate("Hello world.", seed=0, max_new_tokens=60)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.size > 0 and wav.size % SAMPLES_PER_TOKEN == 0
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    out = tmp_path / "hello.wav"
    soundfile.write(out, wav, english.sample_rate)
    back, sr = soundfile.read(out, dtype="float32")
    assert sr == 24_000 and back.shape == wav.shape


def test_seed_makes_output_reproducible(english: ChatterboxTTS) -> None:
    first = english.generate("Reproducible speech.", seed=123, max_new_tokens=40)
    again = english.generate("Reproducible speech.", seed=123, max_new_tokens=40)
    other = english.generate("Reproducible speech.", seed=124, max_new_tokens=40)
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_max_new_tokens_bounds_audio_length(english: ChatterboxTTS) -> None:
    wav = english.generate("A longer sentence that could go on for a while.", seed=1, max_new_tokens=12)
    assert wav.size <= 12 * SAMPLES_PER_TOKEN


@pytest.mark.parametrize("language, text", [("fr", "Bonjour le monde."), ("ja", "こんにちは、世界。"), ("ko", "안녕하세요."), ("zh", "你好。")])
def test_multilingual_generate(multilingual: ChatterboxTTS, language: str, text: str) -> None:
    wav = multilingual.generate(text, language_id=language, seed=0, max_new_tokens=40)
    assert wav.dtype == np.float32 and wav.size > 0 and np.isfinite(wav).all()


def test_voice_clone_from_clip_and_cache(english: ChatterboxTTS, tmp_path: Path) -> None:
    clip = tmp_path / "voice.flac"
    soundfile.write(clip, chirp(3.0), 24_000)
    conds = english.prepare_conditionals(clip, exaggeration=0.7)
    assert conds.t3.speaker_emb.shape == (1, 256)
    assert float(conds.t3.emotion_adv.reshape(-1)[0]) == pytest.approx(0.7)
    assert conds.t3.cond_prompt_speech_tokens.shape[0] == 1
    assert conds.gen["prompt_feat"].shape[-1] == 80
    again = english.prepare_conditionals(clip.read_bytes(), exaggeration=0.7)
    assert torch.equal(again.t3.speaker_emb, conds.t3.speaker_emb)
    assert len(english.voices._cache) == 1
    wav = english.generate("Cloned.", audio_prompt_path=clip, seed=0, max_new_tokens=30)
    assert wav.size > 0


def test_errors_are_clear(english: ChatterboxTTS, multilingual: ChatterboxTTS, tmp_path: Path) -> None:
    with pytest.raises(EmptyTextError):
        english.generate("   ")
    with pytest.raises(UnsupportedLanguageError) as err:
        multilingual.generate("Hello.", language_id="xx")
    for language in ("ar", "fr", "ja", "zh", "sw"):
        assert language in str(err.value)
    with pytest.raises(UnsupportedLanguageError):
        english.generate("Bonjour.", language_id="fr")
    garbage = tmp_path / "voice.wav"
    garbage.write_bytes(b"RIFF not really audio")
    with pytest.raises(AudioDecodeError):
        english.generate("Hi.", audio_prompt_path=garbage)
    short = tmp_path / "short.wav"
    soundfile.write(short, chirp(0.1), 24_000)
    with pytest.raises(VoiceCloneError):
        english.generate("Hi.", audio_prompt_path=short)


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for item in src.iterdir():
        if item.is_file():
            (dst / item.name).write_bytes(item.read_bytes())
    return dst


def _with_pace(checkpoint: Path, directory: Path, pace: object) -> Path:
    paced = _copy_checkpoint(checkpoint, directory)
    record = json.loads((paced / CONFIG_FILE).read_text())
    record["speech_tokens_per_text_token"] = pace
    (paced / CONFIG_FILE).write_text(json.dumps(record))
    return paced


def test_a_random_checkpoints_pieces_stop_at_its_speaking_pace(
    english: ChatterboxTTS, english_tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """random-tiny's config records a speaking pace (its random T3 never samples the stop token); without one (the
    trained checkpoints, this test fixture) max_new_tokens alone bounds a piece, as before."""
    paced = ChatterboxTTS.from_local(_with_pace(english_tiny_checkpoint, tmp_path / "paced", 2.5), device="cpu",
                                     engine="torch")  # fmt: skip
    params = SamplingParams(max_new_tokens=1000)
    for text in ("Hello world.", "A longer sentence, which would take a few seconds to say out loud."):
        tokens = paced.text_tokens(text)
        assert paced.piece_params(tokens, params).max_new_tokens == math.ceil(2.5 * tokens.numel())
        assert english.piece_params(tokens, params) is params
    short = paced.text_tokens("Hi.")
    assert paced.piece_params(short, SamplingParams(max_new_tokens=5)).max_new_tokens == 5  # the smaller bound wins
    wav = paced.generate("Hello world.", seed=0, max_new_tokens=1000)
    assert 0 < wav.size <= math.ceil(2.5 * paced.text_tokens("Hello world.").numel()) * SAMPLES_PER_TOKEN
    for bad in (-1, 0, "fast", True):
        with pytest.raises(CheckpointError, match="speech_tokens_per_text_token"):
            ChatterboxTTS.from_local(_with_pace(english_tiny_checkpoint, tmp_path / f"bad-{bad}", bad), device="cpu",
                                     engine="torch")  # fmt: skip


def test_truncated_and_incomplete_checkpoints_fail_with_file_name(english_tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = _copy_checkpoint(english_tiny_checkpoint, tmp_path / "truncated")
    data = (broken / "t3_cfg.safetensors").read_bytes()
    (broken / "t3_cfg.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t3_cfg.safetensors"):
        ChatterboxTTS.from_local(broken, device="cpu")

    incomplete = _copy_checkpoint(english_tiny_checkpoint, tmp_path / "incomplete")
    (incomplete / "s3gen.safetensors").unlink()
    with pytest.raises(CheckpointError, match="s3gen.safetensors"):
        ChatterboxTTS.from_local(incomplete, device="cpu")

    with pytest.raises(CheckpointError, match="not a directory"):
        ChatterboxTTS.from_local(tmp_path / "nowhere", device="cpu")


def test_s3gen_options_place_the_tokenizer_and_pick_the_flow_dtype(english_tiny_checkpoint) -> None:
    from chatterbox_vllm.tts import S3GenOptions, flow_compute_dtype

    tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")
    assert tts.s3gen.flow.decoder.compute_dtype is None  # float32 by default
    # bfloat16 applies on GPUs only (on the CPU it would only slow the flow down)
    settings = Settings(model=str(english_tiny_checkpoint), device="cpu", engine="torch", s3gen_dtype="bfloat16",
                        s3gen_compile=True, preset="low")  # fmt: skip
    low = ChatterboxTTS.from_settings(settings)
    assert low.s3gen.flow.decoder.compute_dtype is None
    assert not low.s3gen.flow.decoder.compiled  # compiled blocks only beside CUDA graphs (warmed up at start-up)
    assert low.s3gen.tokenizer.device == torch.device("cpu")
    assert S3GenOptions().flow_dtype == "float32" and not S3GenOptions().compile_flow
    # half precision only on GPUs: on a CPU every setting computes in float32
    assert all(flow_compute_dtype(name, torch.device("cpu")) is None for name in ("auto", "float16", "bfloat16"))
    assert not tts.s3gen.flow.decoder.compiled


def test_the_stages_compose_to_generate(english: ChatterboxTTS) -> None:
    """generate is T3's stage (text -> speech tokens) then the vocoder's (speech tokens -> waveform): run one after
    the other on their own, the stages give the same samples."""
    from chatterbox_vllm.t3_stage import T3Stage

    assert isinstance(english.t3, T3Stage) and english.engine is english.t3.engine
    text, seed = "The stages on their own.", 11
    assert english.default_conds is not None
    conds = english.default_conds.with_exaggeration(0.5)
    params = english.t3.sampling_params(seed=seed, max_new_tokens=40)
    speech = english.t3.speech_tokens(english.t3.text_tokens(text), conds.t3, params)
    assert speech and all(isinstance(token, int) for token in speech)
    np.testing.assert_array_equal(english.vocoder.vocode(speech, conds, seed=seed),
                                  english.generate(text, seed=seed, max_new_tokens=40))  # fmt: skip


def test_from_pretrained_takes_any_model_setting(english_tiny_checkpoint: Path, tmp_path: Path) -> None:
    """from_pretrained loads what CHATTERBOX_MODEL may name: a directory here, and random-tiny (written to the cache
    directory it is given); `options` replace device and engine."""
    from chatterbox_vllm.loading import LoadOptions

    stages: list[str] = []
    tts = ChatterboxTTS.from_pretrained(str(english_tiny_checkpoint), options=LoadOptions("cpu", "torch"),
                                        progress=stages.append)  # fmt: skip
    try:
        assert tts.variant == "english" and tts.engine.name == "torch" and tts.device == torch.device("cpu")
        assert stages[0] == "checking the checkpoint directory" and len(stages) == 3
    finally:
        tts.close()
    random = ChatterboxTTS.from_pretrained("random-tiny-turbo", device="cpu", engine="torch",
                                          server_cache_dir=tmp_path / "cache")  # fmt: skip
    try:
        assert random.variant == "turbo" and random.vocoder_spec is not None
        assert Path(random.vocoder_spec.directory).is_relative_to(tmp_path / "cache")
    finally:
        random.close()
