"""vLLM's KV cache fixed at what a full batch of full-length requests needs (`vram_plan.t3_kv_need_bytes`,
`vllm_engine.fit_kv_cache`).

The bytes follow the real T3 configs as vLLM reads them (the model directory's config.json), and are fixed only at
the presets where they are less than the T3 budget leaves. Then a real vLLM engine (the CPU build) started with
exactly that size: vLLM's own block count is those bytes, and two requests of max_model_len tokens each decode
together with neither preempted. A size that forgot the CFG rows, the dtype or vLLM's null block makes vLLM
preempt one of them (its KV cache cannot hold both), which `test_a_full_batch_decodes_without_preemption` sees.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from chatterbox_vllm.engine.vllm_t3.model_dir import vllm_hf_config
from chatterbox_vllm.models.t3.config import T3Config
from chatterbox_vllm.settings import PRESETS
from chatterbox_vllm.vram_plan import (
    KV_UNIT_TOKENS, t3_kv_bytes_per_token, t3_kv_cache_to_fix, t3_kv_need_bytes, t3_kv_room_bytes,
)  # fmt: skip

VARIANTS = ("english", "multilingual", "turbo", "nano")


def vllm_kv_bytes_per_token(config: T3Config, dtype_bytes: int) -> int:
    """K and V of one token in every layer, from the config vLLM is given (the Llama T3's doubled CFG stream: twice
    the KV heads; GPT-2's own keys)."""
    hf = vllm_hf_config(config)
    if config.backbone == "gpt2":
        return hf["n_layer"] * 2 * hf["n_embd"] * dtype_bytes
    return hf["num_hidden_layers"] * 2 * hf["num_key_value_heads"] * hf["head_dim"] * dtype_bytes


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_kv_need_counts_what_vllm_stores(variant: str) -> None:
    config = T3Config.for_variant(variant)
    for dtype_bytes in (2, 4):
        assert t3_kv_bytes_per_token(config, dtype_bytes) == vllm_kv_bytes_per_token(config, dtype_bytes)
    per_token = vllm_kv_bytes_per_token(config, 2)
    for preset, limits in PRESETS.items():
        seqs, length = limits.max_batch_size, limits.max_model_len
        need = t3_kv_need_bytes(config, seqs, length)
        exact = seqs * length * per_token
        assert need % (KV_UNIT_TOKENS * per_token) == 0, preset  # whole blocks of 16 (GPU) and 128 (CPU) tokens
        # the margin: one 128-token unit a request and vLLM's null block
        assert need == exact + (seqs + 1) * KV_UNIT_TOKENS * per_token, preset


def test_the_low_preset_figures() -> None:
    """The figures the docs quote: 2 x 1,536 tokens of the Llama T3 (CFG rows: 240 KiB a token) and Turbo's."""
    low = PRESETS["low"]
    llama = t3_kv_need_bytes(T3Config.multilingual(), low.max_batch_size, low.max_model_len)
    assert llama == 3456 * 240 * 1024  # 0.79 GiB; without the margin 3,072 tokens, 0.70 GiB
    assert round(llama / 2**30, 2) == 0.79
    turbo = t3_kv_need_bytes(T3Config.turbo(), low.max_batch_size, low.max_model_len)
    assert turbo == 3456 * 96 * 1024 and round(turbo / 2**30, 2) == 0.32
    # what the low budget leaves the multilingual T3 by the plan's count: ~0.37 GiB, less than the need
    room = t3_kv_room_bytes(T3Config.multilingual(), int(low.gpu_memory_gib * 2**30))
    assert 0.36 < room / 2**30 < 0.38


@pytest.mark.parametrize(
    ("variant", "fixed_at"),
    [
        ("english", set()),  # the Llama T3's full batch needs more than every preset's budget leaves
        ("multilingual", set()),
        ("turbo", {"low", "medium"}),  # high: 64 x 3,072 tokens need 18.8 GiB
        ("nano", {"low", "medium", "high"}),
    ],
)
def test_the_need_is_fixed_only_where_it_lowers_memory(variant: str, fixed_at: set[str]) -> None:
    config = T3Config.for_variant(variant)
    for preset, limits in PRESETS.items():
        seqs, length, budget = limits.max_batch_size, limits.max_model_len, int(limits.gpu_memory_gib * 2**30)
        size = t3_kv_cache_to_fix(config, seqs, length, budget)
        if preset in fixed_at:
            assert size == t3_kv_need_bytes(config, seqs, length) < t3_kv_room_bytes(config, budget), preset
        else:
            assert size is None, preset  # vLLM sizes its cache from the budget, as before


def test_a_size_fixed_already_is_only_lowered() -> None:
    """S3Gen starting beside the engine fixes the size the budget holds (`s3gen_beside`): the need replaces it only
    where it is smaller."""
    turbo, high = T3Config.turbo(), PRESETS["high"]
    budget = int(high.gpu_memory_gib * 2**30)
    beside = t3_kv_room_bytes(turbo, budget)
    assert t3_kv_cache_to_fix(turbo, 64, 3072, budget, fixed=beside) == beside
    assert t3_kv_cache_to_fix(turbo, 2, 1536, budget, fixed=beside) == t3_kv_need_bytes(turbo, 2, 1536)


def test_float32_counts_twice_the_bytes() -> None:
    config = T3Config.multilingual()
    assert t3_kv_need_bytes(config, 2, 1536, 4) == 2 * t3_kv_need_bytes(config, 2, 1536, 2)


# ------------------------------------------------------------------------------------ a real engine, that size
MAX_MODEL_LEN = 512
MAX_NUM_SEQS = 2
PROMPT_ROWS = 40


@pytest.fixture(scope="module")
def sized_engine(multilingual_tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The tiny multilingual T3 on vLLM's CPU build, its KV cache fixed at what two requests of 512 tokens need."""
    pytest.importorskip("vllm")
    from chatterbox_vllm.checkpoint.config import load_model_config
    from chatterbox_vllm.checkpoint.layout import LAYOUTS
    from chatterbox_vllm.engine.factory import prefix_only
    from chatterbox_vllm.engine.vllm_engine import VLLMOptions, VLLMT3Engine
    from chatterbox_vllm.models.t3 import load_t3

    layout = LAYOUTS["multilingual"]
    config = load_model_config(multilingual_tiny_checkpoint, layout).t3
    weights = multilingual_tiny_checkpoint / layout.t3
    kv_bytes = t3_kv_need_bytes(config, MAX_NUM_SEQS, MAX_MODEL_LEN, dtype_bytes=4)  # float32 on CPU
    options = VLLMOptions(
        max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS, dtype="float32", kv_cache_memory_bytes=kv_bytes,
        cache_dir=tmp_path_factory.mktemp("vllm-cache"),
    )  # fmt: skip
    # vLLM's CPU build takes VLLM_CPU_KVCACHE_SPACE (which tests/conftest.py sets) over kv_cache_memory_bytes
    space = os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    try:
        engine = VLLMT3Engine(prefix_only(load_t3(weights, config).eval()), weights, options)
    finally:
        if space is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = space
    try:
        yield engine
    finally:
        engine.shutdown()


def preemptions() -> float:
    """vLLM's count of preempted requests (its Prometheus counter, every engine of this process)."""
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == "vllm:num_preemptions_total"
    )


def test_vllm_holds_exactly_the_fixed_size(sized_engine) -> None:
    cache = sized_engine.llm.vllm_config.cache_config
    per_token = t3_kv_bytes_per_token(sized_engine.config, 4)
    assert cache.block_size in (16, 32, 64, 128)  # divides KV_UNIT_TOKENS
    # vLLM's own count of the bytes given: whole blocks of exactly the per-token size counted here
    assert cache.num_gpu_blocks * cache.block_size * per_token == sized_engine.options.kv_cache_memory_bytes
    usable = (cache.num_gpu_blocks - 1) * cache.block_size  # block 0 is vLLM's null block
    assert usable >= MAX_NUM_SEQS * MAX_MODEL_LEN


def test_a_full_batch_decodes_without_preemption(sized_engine) -> None:
    """Both requests of the batch at max_model_len tokens (prompt + new tokens; the stop token held back until the
    last), at once: each gets every token, and vLLM preempts neither (it would, with less KV cache than both hold)."""
    from chatterbox_vllm.engine.base import SamplingParams
    from chatterbox_vllm.engine.vllm_engine import vllm_sampling_params

    engine = sized_engine
    new_tokens = MAX_MODEL_LEN - PROMPT_ROWS
    params = SamplingParams(temperature=0.8, cfg_weight=0.5, max_new_tokens=new_tokens, seed=7)
    sampling = vllm_sampling_params(params, engine.config, min_tokens=new_tokens, final_only=True)
    width = 2 * engine.config.hidden_size  # the conditional and unconditional rows side by side
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randn(PROMPT_ROWS, width, generator=generator) * 0.1 for _ in range(MAX_NUM_SEQS)]

    async def one(index: int, embeds: torch.Tensor) -> list[int]:
        tokens: list[int] = []
        async for output in engine.llm.generate({"prompt_embeds": embeds}, sampling, f"full-batch-{index}"):
            tokens = list(output.outputs[0].token_ids)
        return tokens

    async def batch() -> list[list[int]]:
        return await asyncio.gather(*(one(i, embeds) for i, embeds in enumerate(prompts)))

    before = preemptions()
    outputs = asyncio.run_coroutine_threadsafe(batch(), engine._loop).result(timeout=600)
    assert [len(tokens) for tokens in outputs] == [new_tokens] * MAX_NUM_SEQS
    assert preemptions() == before, "vLLM preempted a request: its KV cache does not hold the full batch"



def test_a_cpu_engine_keeps_its_own_kv_setting() -> None:
    """Off a GPU the options are left as they are: vLLM's CPU build sizes its cache from VLLM_CPU_KVCACHE_SPACE."""
    from chatterbox_vllm.engine.vllm_engine import VLLMOptions, fit_kv_cache

    options = VLLMOptions(max_model_len=1536, max_num_seqs=2, dtype="bfloat16")
    assert fit_kv_cache(options, T3Config.turbo(), torch.device("cpu")) is options
