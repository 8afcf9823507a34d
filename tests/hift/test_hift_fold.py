"""HiFT's weight norm folded once after loading (`fold_weight_norm`): the same waveform as the parametrized
convolutions, and the published `...parametrizations.weight.original0/1` names still load first."""

from __future__ import annotations

import pytest
import torch

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import resolve_model
from chatterbox_vllm.checkpoint.weights import load_strict, read_state_dict
from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.s3gen.hift import HiFTConfig, HiFTGenerator
from chatterbox_vllm.vocoder import S3GenOptions, load_s3gen_for

PREFIX = "mel2wav."


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error against the output's scale (max abs)."""
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max())


def _pair() -> tuple[HiFTGenerator, HiFTGenerator]:
    """A tiny HiFT with random weights and a second one loaded from its state dict (the published names), folded.
    (Two models, not a deep copy: a copy shares the parametrized class that folding rewrites.)"""
    torch.manual_seed(0)
    parametrized = HiFTGenerator(HiFTConfig.tiny()).eval()
    folded = HiFTGenerator(HiFTConfig.tiny()).eval()
    folded.load_state_dict(parametrized.state_dict())
    return parametrized, folded.eval()


def test_folded_weights_give_the_same_waveform() -> None:
    parametrized, folded = _pair()
    names = set(parametrized.state_dict())
    assert "conv_pre.parametrizations.weight.original0" in names and not folded.weight_norm_folded
    assert folded.fold_weight_norm() == 82  # every weight-normed convolution, the F0 predictor's included
    assert folded.weight_norm_folded and not parametrized.weight_norm_folded
    assert "conv_pre.weight" in folded.state_dict() and "conv_pre.parametrizations.weight.original0" not in folded.state_dict()

    mel = torch.randn(2, 80, 13, generator=torch.Generator().manual_seed(1)) - 4
    want, _ = parametrized.inference(mel, generator=torch.Generator().manual_seed(2))
    got, _ = folded.inference(mel, generator=torch.Generator().manual_seed(2))
    assert _relative_error(got, want) <= 1e-6

    rows = [torch.randn(80, n, generator=torch.Generator().manual_seed(n)) - 4 for n in (9, 17)]
    want_rows = parametrized.inference_rows(rows, [torch.Generator().manual_seed(s) for s in (3, 4)])
    got_rows = folded.inference_rows(rows, [torch.Generator().manual_seed(s) for s in (3, 4)])
    for got_row, want_row in zip(got_rows, want_rows, strict=True):
        assert _relative_error(got_row, want_row) <= 1e-6


def test_folding_twice_is_a_no_op() -> None:
    _, folded = _pair()
    folded.fold_weight_norm()
    weight = folded.conv_post.weight.clone()
    assert folded.fold_weight_norm() == 0
    assert torch.equal(folded.conv_post.weight, weight)


def test_the_inference_loader_reads_the_published_names_then_folds(english_tiny_checkpoint) -> None:
    """The checkpoint file keeps the parametrization's names; `load_s3gen` loads them strictly (and keeps them by
    default); the server's loader (`load_s3gen_for`: ChatterboxTTS and the S3Gen process's Vocoder) then folds."""
    path = english_tiny_checkpoint / "s3gen.safetensors"
    state = read_state_dict(path)
    assert f"{PREFIX}conv_pre.parametrizations.weight.original0" in state
    directory, layout = resolve_model(str(english_tiny_checkpoint))
    model_config = load_model_config(directory, layout)
    config = model_config.s3gen

    published = load_s3gen(path, config)
    assert not published.mel2wav.weight_norm_folded
    assert {k for k in published.state_dict() if k.startswith(PREFIX)} == {k for k in state if k.startswith(PREFIX)}
    assert load_s3gen(path, config, fold_weight_norm=True).mel2wav.weight_norm_folded

    s3gen = load_s3gen_for(directory, layout, model_config, torch.device("cpu"), S3GenOptions(compile_flow=True),
                           graphs=True, analysis=False)  # fmt: skip
    assert s3gen.mel2wav.weight_norm_folded
    assert not s3gen.mel2wav.compiled and not s3gen.flow.decoder.compiled  # on a CPU: eager, as before

    mel = torch.randn(1, 80, 11, generator=torch.Generator().manual_seed(5)) - 4
    want, _ = published.mel2wav.inference(mel, generator=torch.Generator().manual_seed(6))
    got, _ = s3gen.mel2wav.inference(mel, generator=torch.Generator().manual_seed(6))
    assert _relative_error(got, want) <= 1e-6

    alone = HiFTGenerator(config.hift)  # the vocoder alone from the file's names, as the golden tests load it
    load_strict(alone, {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}, str(path))
    assert torch.equal(alone.eval().inference(mel, generator=torch.Generator().manual_seed(6))[0], want)


@pytest.mark.parametrize("fold", [False, True])
def test_weight_norm_folded_reports_state(fold: bool) -> None:
    _, model = _pair()
    if fold:
        model.fold_weight_norm()
    assert model.weight_norm_folded is fold
