"""Voice conditionals stored beside the clips: used only for the model and clip they were made from, recomputed
otherwise, and equal to a fresh analysis. Real voice encoder and S3Gen of the tiny checkpoint; no server."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors import safe_open

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.layout import ENGLISH
from chatterbox_vllm.conditioning import VoiceConditioner
from chatterbox_vllm.conditioning_store import CONDITIONING_FORMAT, ConditioningStore
from chatterbox_vllm.tts import ChatterboxTTS, voice_analysis_fingerprint
from support.conditionals import assert_same_conditionals


def _clip(path: Path, seed: int, seconds: float = 3.0) -> Path:
    """A voiced-sounding clip (a chirp with a little noise), distinct for each seed."""
    rate = 24_000
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = 0.4 * np.sin(2 * np.pi * ((120 + 10 * seed) * t + 300 * t**2)) + 0.02 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave.astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def english(english_tiny_checkpoint: Path) -> ChatterboxTTS:
    return ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")


def fresh_conditioner(tts: ChatterboxTTS) -> VoiceConditioner:
    """A conditioner over the model's networks with an empty cache: a restarted server's."""
    return VoiceConditioner(tts.voice_encoder, tts.s3gen, prompt_tokens=tts.voices.prompt_tokens, device=tts.device)


def test_a_stored_analysis_is_used_after_a_restart(english: ChatterboxTTS, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "voices" / "narrator.wav", seed=1)
    store = ConditioningStore(tmp_path / "voices", "english", english.conditioning_fingerprint)
    first, source = fresh_conditioner(english).for_clip(clip, store)
    assert source == "computed"
    path = tmp_path / "voices" / ".conditioning" / "narrator" / "english.safetensors"
    assert path.is_file()
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["fingerprint"] == english.conditioning_fingerprint and metadata["format"] == CONDITIONING_FORMAT
    assert_same_conditionals(first, english.voices.compute(clip.read_bytes()))

    restarted = fresh_conditioner(english)
    analysed: list[bytes] = []
    again, source = restarted.for_clip(clip, store, compute=lambda data: analysed.append(data) or restarted.compute(data))
    assert source == "stored" and analysed == []
    assert_same_conditionals(again, first)
    _, source = restarted.for_clip(clip, store)
    assert source == "memory"


def test_another_model_or_clip_or_a_damaged_file_is_analysed_again(english: ChatterboxTTS, tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    clip = _clip(voices / "anna.wav", seed=2)
    want = english.voices.compute(clip.read_bytes())
    other_model = ConditioningStore(voices, "english", "0" * 64)
    other_model.save("anna", _sha(clip), english.default_conds)  # another voice, under another model's fingerprint
    store = ConditioningStore(voices, "english", english.conditioning_fingerprint)
    path = store.path("anna")
    assert store.load("anna", _sha(clip), "cpu") is None

    got, source = fresh_conditioner(english).for_clip(clip, store)
    assert source == "computed"
    assert_same_conditionals(got, want)
    assert_same_conditionals(store.load("anna", _sha(clip), "cpu"), want)  # rewritten for this model

    _clip(clip, seed=3)  # the clip changed under the same name: the stored file describes the old one
    assert store.load("anna", _sha(clip), "cpu") is None
    want = english.voices.compute(clip.read_bytes())
    got, source = fresh_conditioner(english).for_clip(clip, store)
    assert source == "computed"
    assert_same_conditionals(got, want)

    good = path.read_bytes()
    damaged = [b"not safetensors at all", good[: len(good) // 2], good[:-8] + bytes(8)]  # garbage, cut, bytes flipped
    for data in damaged:
        path.write_bytes(data)
        assert store.load("anna", _sha(clip), "cpu") is None
        got, source = fresh_conditioner(english).for_clip(clip, store)
        assert source == "computed"
        assert_same_conditionals(got, want)
        assert_same_conditionals(store.load("anna", _sha(clip), "cpu"), want)  # rewritten whole


def test_an_upload_is_stored_even_when_memory_already_had_it(english: ChatterboxTTS, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "voices" / "twice.wav", seed=4)
    conditioner = fresh_conditioner(english)
    conditioner.for_clip(clip)  # in memory only
    store = ConditioningStore(tmp_path / "voices", "english", english.conditioning_fingerprint)
    _, source = conditioner.for_clip(clip, store)
    assert source == "memory" and not store.path("twice").exists()  # a request does not touch the disk
    _, source = conditioner.for_clip(clip, store, persist=True)
    assert source == "memory" and store.load("twice", _sha(clip), "cpu") is not None


def test_an_unwritable_store_leaves_the_voice_working(english: ChatterboxTTS, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "voices" / "ro.wav", seed=5)
    (tmp_path / "voices" / ".conditioning").write_text("a file where the folder should be")
    store = ConditioningStore(tmp_path / "voices", "english", english.conditioning_fingerprint)
    conds, source = fresh_conditioner(english).for_clip(clip, store)
    assert source == "computed" and conds.t3.speaker_emb.shape == (1, 256)


def test_the_fingerprint_follows_the_weights_the_analysis_reads(english_tiny_checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(english_tiny_checkpoint, copy)
    config = load_model_config(copy, ENGLISH)
    before = voice_analysis_fingerprint(copy, ENGLISH, config)
    assert voice_analysis_fingerprint(copy, ENGLISH, config) == before
    stat = (copy / ENGLISH.t3).stat()
    os.utime(copy / ENGLISH.t3, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert voice_analysis_fingerprint(copy, ENGLISH, config) == before  # T3 is not part of the analysis
    for name in (ENGLISH.voice_encoder, ENGLISH.s3gen):
        stat = (copy / name).stat()
        os.utime(copy / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        changed = voice_analysis_fingerprint(copy, ENGLISH, config)
        assert changed != before, name
        before = changed


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
