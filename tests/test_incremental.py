"""S3Gen over a growing token prefix (the first audio of a stream) on the tiny English checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chatterbox_vllm.incremental import CROSSFADE_SAMPLES, HOLDBACK_TOKENS, IncrementalVocoder
from chatterbox_vllm.tts import SAMPLES_PER_TOKEN, ChatterboxTTS

STOP = 6562


@pytest.fixture(scope="module")
def tts(english_tiny_checkpoint: Path) -> ChatterboxTTS:
    return ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")


def tokens(count: int) -> list[int]:
    return torch.randint(0, 6561, (count,), generator=torch.Generator().manual_seed(5)).tolist()


def feed(vocoder: IncrementalVocoder, sequence: list[int]) -> list[tuple[int, np.ndarray]]:
    """Push token by token as T3 would emit them; (tokens seen, audio) for every non-empty emission."""
    out = []
    for n in range(1, len(sequence) + 1):
        if vocoder.due(n):
            audio = vocoder.push(sequence[:n], final=False)
            if len(audio):
                out.append((n, audio))
    out.append((len(sequence), vocoder.push(sequence, final=True)))
    return out


def test_first_audio_leaves_after_the_first_tokens(tts: ChatterboxTTS) -> None:
    sequence = tokens(60) + [STOP]
    vocoder = IncrementalVocoder(tts, tts.default_conds, max_tokens=100, seed=3, first_tokens=10)
    emissions = feed(vocoder, sequence)
    first_at, first_audio = emissions[0]
    assert first_at == 10
    assert len(first_audio) == (10 - HOLDBACK_TOKENS) * SAMPLES_PER_TOKEN - CROSSFADE_SAMPLES
    assert len(emissions) >= 3 and vocoder.calls == len(emissions)  # 10 and 40 tokens, then the whole piece


def test_parts_add_up_to_the_whole_piece(tts: ChatterboxTTS) -> None:
    sequence = tokens(60) + [STOP]
    vocoder = IncrementalVocoder(tts, tts.default_conds, max_tokens=100, seed=3, first_tokens=10)
    streamed = np.concatenate([audio for _, audio in feed(vocoder, sequence)])
    # The whole piece vocoded at once with the same noise and seed: the ordinary output.
    valid = sequence[:-1]
    frames = vocoder.prompt_frames + 2 * len(valid)
    whole = tts.vocode(valid, tts.default_conds, seed=3, noise=vocoder.noise[:, :, :frames])
    assert len(streamed) == len(whole) == (len(valid) - 1) * SAMPLES_PER_TOKEN
    # after the last partial emission (and its crossfade) the stream is the whole piece's audio, sample for sample
    last_partial_end = (40 - HOLDBACK_TOKENS) * SAMPLES_PER_TOKEN
    np.testing.assert_array_equal(streamed[last_partial_end:], whole[last_partial_end:])
    assert np.isfinite(streamed).all()


def test_without_a_seed_every_call_shares_one(tts: ChatterboxTTS) -> None:
    vocoder = IncrementalVocoder(tts, tts.default_conds, max_tokens=50, first_tokens=10)
    assert isinstance(vocoder.seed, int)
    emissions = feed(vocoder, tokens(30))
    assert sum(len(a) for _, a in emissions) == 29 * SAMPLES_PER_TOKEN


def test_stop_only_gives_silence_not_an_error(tts: ChatterboxTTS) -> None:
    vocoder = IncrementalVocoder(tts, tts.default_conds, max_tokens=10, first_tokens=10)
    assert len(vocoder.push([STOP], final=True)) == 0
