"""HiFT's elementwise regions under torch.compile (`HiFTGenerator.compile_blocks`, the server's `s3gen_compile`):
the same waveform as the eager ops up to rounding, compiled at warm-up, and no compilation per length or row count
afterwards. Here Inductor's CPU backend compiles the same graphs a GPU's would (the server compiles only on GPUs);
the GPU test compares the full-size vocoder's compiled float32 with its eager float32."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from chatterbox_vllm.models.s3gen.hift import HiFTConfig, HiFTGenerator


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error against the waveform's scale (max abs)."""
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max() / expected.abs().max())


def _model(config: HiFTConfig, device: str = "cpu") -> HiFTGenerator:
    torch.manual_seed(0)
    model = HiFTGenerator(config).eval()
    with torch.no_grad():  # non-zero biases: padding produces garbage that the fused masks must keep out
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) and module.bias is not None:
                module.bias.normal_(0.0, 0.1)
    model.fold_weight_norm()
    return model.to(device)


def _calls(model: HiFTGenerator, device: str, cases: list[list[int]]) -> list[torch.Tensor]:
    """Waveforms of padded batches (`inference_rows`, one per case: the rows' mel lengths) and of the first case's
    first mel alone (`inference`, unmasked), each drawing from seeded generators."""
    out: list[torch.Tensor] = []
    for lengths in cases:
        g = torch.Generator().manual_seed(sum(lengths))
        mels = [(torch.randn(80, n, generator=g) - 4).to(device) for n in lengths]
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(len(lengths))]
        out += model.inference_rows(mels, gens)
    alone = (torch.randn(1, 80, cases[0][0], generator=torch.Generator().manual_seed(1)) - 4).to(device)
    wav, _ = model.inference(alone, generator=torch.Generator(device=device).manual_seed(2))
    return [*out, wav[0]]


def test_compiled_regions_match_eager_without_compiling_per_length() -> None:
    model = _model(HiFTConfig.tiny())
    cases = [[9, 23, 4], [40, 15], [30]]  # rows and lengths unlike the warm-up's
    eager = _calls(model, "cpu", cases)
    assert model.warm_up_compiled() == 0  # not compiled: nothing to warm up

    model.compile_blocks()
    assert model.compiled
    assert model.warm_up_compiled() == 3
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    compiled = _calls(model, "cpu", cases)
    compiled += _calls(model, "cpu", [[17, 5], [61]])
    # the warm-up compiled every kind of call: other lengths and row counts reuse its graphs
    assert counters["stats"]["unique_graphs"] == graphs
    for got, want in zip(compiled, eager):
        assert _relative_error(got, want) <= 1e-5
    assert not all(torch.equal(got, want) for got, want in zip(compiled, eager))  # Inductor's kernels ran

    model.uncompile_blocks()  # the way back where Inductor cannot build kernels
    again = _calls(model, "cpu", cases)
    assert not model.compiled
    assert all(torch.equal(got, want) for got, want in zip(again, eager))  # the eager ops again, bit for bit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled HiFT on the GPU: runs on the GPU machine")
def test_gpu_full_size_compiled_matches_eager_float32() -> None:
    """The published vocoder's size (random weights) on the GPU: Inductor's fused Snakes, masks and iSTFT parts
    against the eager float32 ops, within 5e-4 of the waveform's scale, over several lengths and row counts. An
    H200 (2026-12-03) measured 1.4e-4: the GPU's fused sin/exp round differently from the eager kernels, and HiFT's
    three up-sampling stages carry that to the waveform; float16's flow alone moves it ~100x more (BENCHMARKS)."""
    model = _model(HiFTConfig(), "cuda")
    cases = [[120, 47, 300], [211, 90], [64]]
    eager = _calls(model, "cuda", cases)
    model.compile_blocks()
    model.warm_up_compiled()
    graphs = counters["stats"]["unique_graphs"]
    compiled = _calls(model, "cuda", cases)
    assert counters["stats"]["unique_graphs"] == graphs
    for got, want in zip(compiled, eager):
        assert _relative_error(got, want) <= 5e-4
    model.uncompile_blocks()
