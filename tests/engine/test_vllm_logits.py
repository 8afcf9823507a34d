"""T3's vLLM logits processors keep each request's settings and penalty history by batch slot through vLLM's batch
changes (adds, removals, one-way moves, swaps), and their output equals the reference chain row by row.

The processors are driven with vLLM's own BatchUpdate and SamplingParams, as vLLM's model runner drives them; the
engine-level parity tests (test_vllm_engine.py, test_vllm_gpt2.py) cover the same code inside a running engine,
where vLLM decides when batches change."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from vllm import SamplingParams as VLLMSamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from chatterbox_vllm.engine.base import SamplingParams  # noqa: E402
from chatterbox_vllm.engine.sampling import (  # noqa: E402
    apply_cfg,
    apply_repetition_penalty,
    turbo_penalty_history,
    turbo_processed_logits,
)
from chatterbox_vllm.engine.vllm_t3.logits import CFGLogitsProcessor, TurboLogitsProcessor  # noqa: E402
from chatterbox_vllm.engine.vllm_t3.plugin import (  # noqa: E402
    CFG_WEIGHT,
    REPETITION_PENALTY,
    TEMPERATURE,
    TOP_K,
    TOP_P,
)

VOCAB = 64
START = 7
SLOTS = 4


def vllm_config() -> SimpleNamespace:
    """The two fields of vLLM's config the processors read."""
    hf_config = SimpleNamespace(chatterbox_t3={"speech_tokens_dict_size": VOCAB, "start_speech_token": START})
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_config=hf_config), scheduler_config=SimpleNamespace(max_num_seqs=SLOTS)
    )


def update(removed=(), added=(), moved=()) -> BatchUpdate:
    return BatchUpdate(batch_size=SLOTS, removed=list(removed), added=list(added), moved=list(moved))


def cfg_request(weight: float, penalty: float) -> VLLMSamplingParams:
    return VLLMSamplingParams(extra_args={CFG_WEIGHT: weight, REPETITION_PENALTY: penalty})


def cfg_reference(logits: torch.Tensor, weight: float, penalty: float, generated: list[int]) -> torch.Tensor:
    mixed = apply_cfg(logits[None, :VOCAB], logits[None, VOCAB:], weight)
    return apply_repetition_penalty(mixed, torch.tensor([START, *generated]), penalty)[0]


def check_cfg(processor: CFGLogitsProcessor, slots: list[tuple[float, float, list[int]]], seed: int) -> None:
    logits = torch.randn(len(slots), 2 * VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    out = processor.apply(logits.clone())
    for row, (weight, penalty, generated) in enumerate(slots):
        assert torch.equal(out[row, :VOCAB], cfg_reference(logits[row], weight, penalty, generated)), row
    assert torch.isneginf(out[:, VOCAB:]).all()  # the sampler can never pick the unconditional half


def test_cfg_rows_follow_their_requests_through_batch_changes() -> None:
    processor = CFGLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    a, b, c, d = [], [5], [9, 10], []  # vLLM's live lists of generated ids (b and c were preempted and resumed)
    settings = {"a": (0.5, 1.2), "b": (0.3, 1.5), "c": (0.0, 2.0), "d": (1.0, 0.8)}
    processor.update_state(
        update(added=[(0, cfg_request(*settings["a"]), None, a), (1, cfg_request(*settings["b"]), None, b),
                      (2, cfg_request(*settings["c"]), None, c)])
    )  # fmt: skip
    check_cfg(processor, [(*settings["a"], a), (*settings["b"], b), (*settings["c"], c)], seed=0)

    a.append(START)  # a generated start token stays penalised
    b.append(5)  # a repeat
    c.append(11)
    processor.update_state(update(moved=[(0, 2, MoveDirectionality.SWAP)]))
    check_cfg(processor, [(*settings["c"], c), (*settings["b"], b), (*settings["a"], a)], seed=1)

    # b finishes; its slot is refilled by d, then a moves one way into the gap left by a removal.
    processor.update_state(update(removed=[1], added=[(1, cfg_request(*settings["d"]), None, d)]))
    d.append(3)
    c.append(12)
    check_cfg(processor, [(*settings["c"], c), (*settings["d"], d), (*settings["a"], a)], seed=2)
    processor.update_state(update(removed=[0], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    a.append(40)
    d.append(41)
    check_cfg(processor, [(*settings["a"], a), (*settings["d"], d)], seed=3)
    assert processor.live == {0, 1}


def test_cfg_skips_tokens_still_in_flight() -> None:
    """Async scheduling leaves -1 placeholders in the lists until the token is known: they are read later."""
    processor = CFGLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    generated = [4, -1]
    processor.update_state(update(added=[(0, cfg_request(0.5, 1.3), None, generated)]))
    check_cfg(processor, [(0.5, 1.3, [4])], seed=4)
    generated[1] = 20
    check_cfg(processor, [(0.5, 1.3, [4, 20])], seed=5)


def turbo_request(params: SamplingParams) -> VLLMSamplingParams:
    return VLLMSamplingParams(
        extra_args={TEMPERATURE: params.temperature, TOP_K: params.top_k, TOP_P: params.top_p,
                    REPETITION_PENALTY: params.repetition_penalty}
    )  # fmt: skip


def test_turbo_rows_equal_the_reference_chain_through_batch_changes() -> None:
    processor = TurboLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    first = SamplingParams(temperature=0.8, top_k=10, top_p=0.9, repetition_penalty=1.2)
    second = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.5)
    x, y = [], []
    processor.update_state(update(added=[(0, turbo_request(first), None, x), (1, turbo_request(second), None, y)]))

    def check(rows: list[tuple[SamplingParams, list[int]]], seed: int) -> None:
        logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
        out = processor.apply(logits.clone())
        for row, (params, generated) in enumerate(rows):
            history = turbo_penalty_history(START, torch.tensor(generated, dtype=torch.long))
            want = turbo_processed_logits(logits[row : row + 1], history, params)[0]
            assert torch.equal(out[row], want), row

    check([(first, x), (second, y)], seed=0)  # the start token is penalised before any token exists
    x.append(30)
    y.append(START)  # forgotten first, then penalised again as a generated token
    check([(first, x), (second, y)], seed=1)
    processor.update_state(update(moved=[(0, 1, MoveDirectionality.SWAP)]))
    x.append(31)
    check([(second, y), (first, x)], seed=2)


def top_level_ops(processor, histories: list[list[int]], width: int) -> list[str]:
    """The torch ops one `apply` dispatches (on a GPU each is a launch or a view), after a new token per row."""
    for row, history in enumerate(histories):
        history.append(row + 1)
    logits = torch.randn(len(histories), width)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        processor.apply(logits)
    return [event.name for event in prof.events() if event.cpu_parent is None]


@pytest.mark.parametrize("chain", [CFGLogitsProcessor, TurboLogitsProcessor])
def test_host_work_per_step_does_not_grow_with_the_batch(chain) -> None:
    """Per-row settings and the new tokens go to the device as whole-batch tensors: one row or four, `apply`
    dispatches the same torch ops (a per-row tensor op would add ops per request)."""
    params = cfg_request(0.5, 1.2) if chain is CFGLogitsProcessor else turbo_request(SamplingParams(top_k=5))
    width = 2 * VOCAB if chain is CFGLogitsProcessor else VOCAB
    ops = []
    for batch in (1, SLOTS):
        processor = chain(vllm_config(), torch.device("cpu"), False)
        histories: list[list[int]] = [[] for _ in range(batch)]
        processor.update_state(update(added=[(i, params, None, histories[i]) for i in range(batch)]))
        top_level_ops(processor, histories, width)  # the first step also forgets Turbo's start token
        ops.append(top_level_ops(processor, histories, width))
    assert ops[0] == ops[1]
    assert ops[0].count("aten::index_fill_") == 1  # every row's new token marked by one scatter
