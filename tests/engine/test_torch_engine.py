"""TorchT3Engine on tiny random T3 models: sampling order, seeding, stop token, limits, CFG on/off."""

from __future__ import annotations

import asyncio

import pytest
import torch

from chatterbox_vllm.engine.base import SamplingParams, T3Engine, speech_tokens_for_s3gen
from chatterbox_vllm.engine.sampling import apply_cfg, sampling_probs
from chatterbox_vllm.engine.torch_engine import TorchT3Engine
from chatterbox_vllm.models.t3 import T3, T3Cond, T3Config

TEXT = torch.tensor([255, 41, 7, 2, 88, 300, 9, 0])


def tiny_model(variant: str = "english", seed: int = 0) -> T3:
    torch.manual_seed(seed)
    return T3(T3Config.tiny(variant)).eval()


def voice(seed: int = 1) -> T3Cond:
    g = torch.Generator().manual_seed(seed)
    spk = torch.randn(1, 256, generator=g)
    return T3Cond(spk / spk.norm(), torch.randint(0, 6561, (1, 150), generator=g), torch.full((1, 1, 1), 0.5))


@pytest.fixture(scope="module")
def engine() -> TorchT3Engine:
    return TorchT3Engine(tiny_model(), device="cpu")


@torch.inference_mode()
def reference_style_decode(model: T3, text: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
    """The reference loop written naively: always two rows (row 1's text zeroed only when cfg_weight > 0, as the
    reference does), full recompute each step (no KV cache), global-formula CFG, `torch.multinomial` on a
    generator seeded like the reference's `torch.manual_seed`."""
    cfg = model.config
    cond_emb = model.prepare_conditioning(cond)
    text = text[None]
    rows = torch.cat([model.text_embeds(text), model.text_embeds(text, zero_tokens=params.cfg_weight > 0)])
    bos = model.speech_embeds(torch.tensor([[cfg.start_speech_token]]), 0)
    seq = torch.cat([cond_emb.expand(2, -1, -1), rows, bos.expand(2, 2, -1)], dim=1)
    generator = torch.Generator().manual_seed(params.seed)
    history = [cfg.start_speech_token]
    out = []
    for i in range(params.max_new_tokens):
        logits = model.speech_logits(model(seq)[:, -1])
        probs = sampling_probs(apply_cfg(logits[0:1], logits[1:2], params.cfg_weight), torch.tensor(history), params)
        token = torch.multinomial(probs, 1, generator=generator)
        if int(token) == cfg.stop_speech_token:
            break
        out.append(int(token))
        history.append(int(token))
        seq = torch.cat([seq, model.speech_embeds(token, i + 1).expand(2, -1, -1)], dim=1)
    return out


@pytest.mark.parametrize("cfg_weight", [0.5, 0.0])
def test_matches_naive_reference_loop(engine: TorchT3Engine, cfg_weight: float) -> None:
    params = SamplingParams(cfg_weight=cfg_weight, max_new_tokens=12, seed=123)
    want = reference_style_decode(engine.model, TEXT, voice(), params)
    assert engine.generate(TEXT, voice(), params) == want
    assert len(want) == 12


def test_seeded_determinism_and_stream(engine: TorchT3Engine) -> None:
    params = SamplingParams(max_new_tokens=16, seed=7)
    first = engine.generate(TEXT, voice(), params)
    assert engine.generate(TEXT, voice(), params) == first
    assert list(engine.stream(TEXT, voice(), params)) == first
    assert engine.generate(TEXT, voice(), SamplingParams(max_new_tokens=16, seed=8)) != first


def test_uses_private_rng(engine: TorchT3Engine) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    engine.generate(TEXT, voice(), SamplingParams(max_new_tokens=4, seed=1))
    engine.generate(TEXT, voice(), SamplingParams(max_new_tokens=4, seed=None))
    assert torch.equal(torch.rand(3), expected)


def test_unseeded_runs_differ(engine: TorchT3Engine) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=1.5, min_p=0.0)
    assert engine.generate(TEXT, voice(), params) != engine.generate(TEXT, voice(), params)


def test_greedy_is_seed_independent(engine: TorchT3Engine) -> None:
    # min_p = 1 keeps only the most likely token: sampling becomes argmax, whatever the seed.
    a = engine.generate(TEXT, voice(), SamplingParams(min_p=1.0, max_new_tokens=10, seed=1))
    b = engine.generate(TEXT, voice(), SamplingParams(min_p=1.0, max_new_tokens=10, seed=2))
    assert a == b and len(a) == 10


def _steer(model: T3, *, first: int | None) -> T3:
    """Make the model's next token depend only on the previous one (via a dominant residual direction):
    BOS -> `first` -> stop, or BOS -> stop when `first` is None; the stop row is otherwise never likely."""
    cfg = model.config
    with torch.no_grad():
        emb, head = model.speech_emb.weight, model.speech_head.weight
        emb[:, :2] = 0
        head[:, :2] = 0
        emb[cfg.start_speech_token, 0] = 1000.0  # BOS writes direction 0
        if first is None:
            head[cfg.stop_speech_token, 0] = 30.0
        else:
            head[first, 0] = 30.0
            emb[first, 1] = 1000.0  # `first` writes direction 1, which predicts stop
            head[cfg.stop_speech_token, 1] = 30.0
    return model


@pytest.mark.parametrize("cfg_weight", [0.5, 0.0])
def test_stop_token_ends_generation(cfg_weight: float) -> None:
    params = SamplingParams(max_new_tokens=50, seed=0, cfg_weight=cfg_weight)
    assert TorchT3Engine(_steer(tiny_model(), first=1234)).generate(TEXT, voice(), params) == [1234]
    assert TorchT3Engine(_steer(tiny_model(), first=None)).generate(TEXT, voice(), params) == []


def test_max_new_tokens_respected() -> None:
    model = tiny_model("multilingual")
    with torch.no_grad():
        model.speech_head.weight[model.config.stop_speech_token] = 0.0
        model.speech_emb.weight[:, 0] = 1000.0  # every position has a strong direction-0 component ...
        model.speech_head.weight[model.config.stop_speech_token, 0] = -50.0  # ... which rules out stop
    engine = TorchT3Engine(model)
    for n in (1, 7):
        tokens = engine.generate(TEXT, voice(), SamplingParams(max_new_tokens=n, seed=3))
        assert len(tokens) == n and model.config.stop_speech_token not in tokens
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(TEXT, voice(), SamplingParams(max_new_tokens=model.config.speech_pos_emb_size + 1))


def test_rejects_bad_text(engine: TorchT3Engine) -> None:
    with pytest.raises(ValueError, match="start with"):
        engine.generate(TEXT[1:], voice(), SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="lie in"):
        engine.generate(torch.tensor([255, 704, 0]), voice(), SamplingParams(max_new_tokens=2))


def test_engine_protocol(engine: TorchT3Engine) -> None:
    assert isinstance(engine, T3Engine)
    assert engine.name == "torch" and engine.concurrent is False and engine.num_unfinished_requests() == 0


def test_async_calls_give_the_sync_tokens_one_request_at_a_time(engine: TorchT3Engine) -> None:
    """Three async callers at once: each gets what `generate` gives it alone; they decode one after another
    (counted as unfinished while they wait), and the event loop stays free meanwhile."""
    params = [SamplingParams(max_new_tokens=12, seed=seed) for seed in (1, 2, 3)]
    alone = [engine.generate(TEXT, voice(), p) for p in params]

    async def run() -> tuple[list[list[int]], list[int], int]:
        async def streamed(p: SamplingParams) -> list[int]:
            return [token async for token in engine.stream_async(TEXT, voice(), p)]

        tasks = [asyncio.ensure_future(engine.generate_async(TEXT, voice(), params[0])),
                 asyncio.ensure_future(streamed(params[1])), asyncio.ensure_future(engine.generate_async(TEXT, voice(), params[2]))]  # fmt: skip
        seen, ticks = [], 0
        while not all(task.done() for task in tasks):
            seen.append(engine.num_unfinished_requests())
            ticks += 1  # the loop runs while the threads decode
            await asyncio.sleep(0.001)
        return [task.result() for task in tasks], seen, ticks

    results, seen, ticks = asyncio.run(run())
    assert results == alone
    assert max(seen) >= 2 and ticks > 3 and engine.num_unfinished_requests() == 0


def test_async_errors_and_early_close(engine: TorchT3Engine) -> None:
    async def run() -> list[int]:
        with pytest.raises(ValueError, match="start with"):
            await engine.generate_async(TEXT[1:], voice(), SamplingParams(max_new_tokens=2))
        with pytest.raises(ValueError, match="start with"):
            async for _ in engine.stream_async(TEXT[1:], voice(), SamplingParams(max_new_tokens=2)):
                pass
        stream = engine.stream_async(TEXT, voice(), SamplingParams(max_new_tokens=200, seed=4))
        first = [await anext(stream), await anext(stream)]
        await stream.aclose()  # the decoding thread stops at its next token and gives the decoder back
        for _ in range(200):
            if engine.num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.01)
        return first

    first = asyncio.run(run())
    assert first == engine.generate(TEXT, voice(), SamplingParams(max_new_tokens=2, seed=4))
    assert engine.num_unfinished_requests() == 0


def test_speech_tokens_for_s3gen() -> None:
    assert speech_tokens_for_s3gen([5, 6560, 6561, 6562, 8000, 0]) == [5, 6560, 0]
    assert speech_tokens_for_s3gen(torch.tensor([7, 6563])) == [7]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"min_p": -0.1},
        {"repetition_penalty": 0.0},
        {"cfg_weight": -1.0},
        {"max_new_tokens": 0},
        {"max_new_tokens": 2.5},
        {"seed": -1},
        {"seed": "1"},
    ],
)
def test_sampling_params_validation(kwargs) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_sampling_defaults() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.min_p, p.repetition_penalty, p.cfg_weight, p.max_new_tokens, p.seed) == (
        0.8, 1.0, 0.05, 1.2, 0.5, 1000, None
    )
