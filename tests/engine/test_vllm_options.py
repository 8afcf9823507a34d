"""The vLLM engine arguments T3 runs with."""

from __future__ import annotations

import pytest

from chatterbox_vllm.engine.vllm_engine import VLLMOptions, cudagraph_capture_sizes, engine_kwargs


@pytest.mark.parametrize("max_num_seqs", [1, 2, 12, 32, 64, 300])
def test_capture_sizes_are_powers_of_two_up_to_vllms_own_largest(max_num_seqs: int) -> None:
    sizes = cudagraph_capture_sizes(max_num_seqs)
    largest = min(2 * max_num_seqs, 512)  # vLLM's default largest capture size
    assert sizes == sorted(set(sizes))
    assert sizes[0] == 1 and sizes[-1] == largest  # every batch vLLM would graph still finds a graph
    assert all(size & (size - 1) == 0 for size in sizes[:-1])
    assert len(sizes) <= largest.bit_length() + 1


def test_eager_engines_capture_nothing(tmp_path) -> None:
    eager = engine_kwargs(tmp_path, VLLMOptions(enforce_eager=True))
    graphs = engine_kwargs(tmp_path, VLLMOptions(max_num_seqs=12))
    assert "compilation_config" not in eager
    assert graphs["compilation_config"] == {"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 24]}
