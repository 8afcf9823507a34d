"""Mels of different lengths vocoded as one padded HiFT batch give what each gives alone.

This is what lets the server vocode concurrent requests together: HiFT's convolutions are not causal, so without
the per-stage masks a short row would hear the padding (and the longer rows' garbage) in its last ~10 frames.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatterbox_vllm.models.s3gen.hift import HiFTConfig, HiFTGenerator, SourceDraws


@pytest.fixture(scope="module")
def hift() -> HiFTGenerator:
    torch.manual_seed(0)
    model = HiFTGenerator(HiFTConfig.tiny()).eval()
    with torch.no_grad():  # non-zero biases: padding produces garbage that masks must keep out
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) and module.bias is not None:
                module.bias.normal_(0.0, 0.5)
    return model


def mels(lengths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(sum(lengths))
    return [torch.randn(80, n, generator=g) - 4 for n in lengths]


def alone(hift: HiFTGenerator, mel: torch.Tensor, seed: int) -> torch.Tensor:
    wav, _ = hift.inference(mel[None], generator=torch.Generator().manual_seed(seed))
    return wav[0]


def test_padded_rows_match_each_row_alone(hift: HiFTGenerator) -> None:
    rows = mels([9, 23, 4, 23])
    seeds = [1, 2, 3, 4]
    batched = hift.inference_rows(rows, [torch.Generator().manual_seed(s) for s in seeds])
    for mel, seed, got in zip(rows, seeds, batched, strict=True):
        want = alone(hift, mel, seed)
        assert got.shape == want.shape == (mel.size(-1) * 480,)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # equal mels with different seeds stay different (each row draws from its own generator)
    assert not torch.allclose(batched[1], batched[3])


def test_without_masks_the_end_of_a_short_row_would_change(hift: HiFTGenerator) -> None:
    """The check above can fail: the same batch decoded naively (padding visible) differs near the short row's end."""
    short, long = mels([6, 20])
    draws = hift.m_source.l_sin_gen.draw(2, 20 * 480, torch.device("cpu"), torch.Generator().manual_seed(5))
    batch = torch.stack([F.pad(short, (0, 14)), long])
    with torch.inference_mode():
        naive, _ = hift.inference(batch, draws=draws)
        single, _ = hift.inference(short[None], draws=SourceDraws(draws.phase[:1], draws.noise[:1, :, : 6 * 480]))
    assert (naive[0, : 6 * 480] - single[0]).abs().max() > 1e-3


def test_generators_end_where_they_would_alone(hift: HiFTGenerator) -> None:
    rows = mels([5, 11])
    batch_gens = [torch.Generator().manual_seed(s) for s in (8, 9)]
    hift.inference_rows(rows, batch_gens)
    for mel, seed, g in zip(rows, (8, 9), batch_gens, strict=True):
        solo = torch.Generator().manual_seed(seed)
        hift.inference(mel[None], generator=solo)
        assert torch.equal(g.get_state(), solo.get_state())


def test_the_batched_source_stft_is_each_rows_own(hift: HiFTGenerator) -> None:
    """One gather + one STFT for the batch: each row's frames as the centred STFT of the row alone (reflected at
    its own end), zero after them."""
    frames = [3, 7, 1, 7, 5]
    g = torch.Generator().manual_seed(3)
    width = max(frames) * 480
    source = torch.randn(len(frames), 1, width, generator=g)
    batched = hift._source_stft_rows(source, frames)
    assert batched.shape[-1] == width // 4 + 1
    for b, f in enumerate(frames):
        own = hift._source_stft(source[b : b + 1, :, : f * 480])[0]
        torch.testing.assert_close(batched[b, :, : own.size(-1)], own, atol=1e-5 * own.abs().max().item(), rtol=0)
        tail = batched[b, :, own.size(-1) :]
        assert tail.numel() == 0 or tail.abs().max() == 0


def test_the_batched_istft_is_each_rows_own(hift: HiFTGenerator) -> None:
    """The overlap-add written out for the batch: each row's waveform as torch.istft of its own frames alone."""
    frames = [2, 6, 6, 1]
    g = torch.Generator().manual_seed(4)
    hops = 480 // 4
    spectrum = torch.randn(len(frames), 18, max(frames) * hops + 1, generator=g)
    batched = hift.istft_rows(spectrum, frames)
    for b, f in enumerate(frames):
        limit = hift.config.audio_limit
        own = hift.istft(spectrum[b : b + 1, :, : f * hops + 1])[0].clamp(-limit, limit)
        assert batched[b].shape == own.shape == (f * 480,)
        torch.testing.assert_close(batched[b], own, atol=1e-5 * own.abs().max().item(), rtol=0)
    # garbage in the padding (random spectrum past a short row's end) reaches no row: checked above for rows 0, 3
    assert batched[0].abs().max() > 1e-3
