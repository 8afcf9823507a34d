"""The vLLM T3 engine against the PyTorch engine (itself exact against the reference), on tiny random checkpoints.

One engine per variant for the whole module (an engine start costs ~20-40 s on CPU); a third one, on a checkpoint
whose stop token was made likely, checks that the stop token ends a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("vllm")

from chatterbox_vllm.checkpoint.config import load_model_config  # noqa: E402
from chatterbox_vllm.checkpoint.layout import LAYOUTS  # noqa: E402
from chatterbox_vllm.conditioning import Conditionals  # noqa: E402
from chatterbox_vllm.engine.base import SamplingParams, T3Engine  # noqa: E402
from chatterbox_vllm.engine.factory import prefix_only  # noqa: E402
from chatterbox_vllm.engine.torch_engine import TorchT3Engine  # noqa: E402
from chatterbox_vllm.engine.vllm_engine import VLLMOptions, VLLMT3Engine  # noqa: E402
from chatterbox_vllm.engine.vllm_t3.plugin import T3_COMPILE  # noqa: E402
from chatterbox_vllm.models.t3 import load_t3  # noqa: E402
from chatterbox_vllm.text.normalize import punc_norm  # noqa: E402
from chatterbox_vllm.text.tokenizers import EnglishTokenizer, MultilingualTokenizer, text_token_ids  # noqa: E402

OPTIONS = VLLMOptions(max_model_len=512, max_num_seqs=8, dtype="float32")
TEXTS = {
    "english": ["Hello world, this is a test.", "A second sentence, rather longer than the first one was.", "Hi."],
    "multilingual": [("fr", "Bonjour le monde."), ("de", "Guten Tag, wie geht es?"), ("ja", "こんにちは。")],
}


class Setup:
    """A checkpoint's reference engine, vLLM engine, voice and tokenizer."""

    def __init__(self, directory: Path, variant: str, cache_dir: Path) -> None:
        layout = LAYOUTS[variant]
        self.config = load_model_config(directory, layout).t3
        weights = directory / layout.t3
        self.reference = TorchT3Engine(load_t3(weights, self.config).eval())
        options = dataclasses.replace(OPTIONS, cache_dir=cache_dir)
        self.engine = VLLMT3Engine(prefix_only(load_t3(weights, self.config).eval()), weights, options)
        self.cond = Conditionals.load(directory / layout.conds).t3
        if variant == "english":
            self.tokenizer = EnglishTokenizer.from_file(directory / layout.text_tokenizer)
        else:
            self.tokenizer = MultilingualTokenizer.from_files(
                directory / layout.text_tokenizer, directory / str(layout.cangjie_table)
            )
        self.variant = variant

    def tokens(self, index: int) -> torch.Tensor:
        item = TEXTS[self.variant][index]
        return encode(self.tokenizer, item)


def encode(tokenizer: EnglishTokenizer | MultilingualTokenizer, item: str | tuple[str, str]) -> torch.Tensor:
    if isinstance(item, tuple):
        language, text = item
        ids = tokenizer.encode(punc_norm(text, multilingual=True), language)
    else:
        ids = tokenizer.encode(punc_norm(item))
    return torch.tensor(text_token_ids(ids))


@pytest.fixture(scope="module")
def english(english_tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    setup = Setup(english_tiny_checkpoint, "english", tmp_path_factory.mktemp("vllm-cache"))
    yield setup
    setup.engine.shutdown()


@pytest.fixture(scope="module")
def multilingual(multilingual_tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    setup = Setup(multilingual_tiny_checkpoint, "multilingual", tmp_path_factory.mktemp("vllm-cache"))
    yield setup
    setup.engine.shutdown()


def greedy(cfg_weight: float, max_new_tokens: int = 64, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, cfg_weight=cfg_weight, max_new_tokens=max_new_tokens, **kwargs)


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("cfg_weight", [0.5, 0.0, 1.3])
@pytest.mark.parametrize("index", [0, 1])
def test_greedy_tokens_equal_torch_engine_english(english: Setup, cfg_weight: float, index: int) -> None:
    text = english.tokens(index)
    params = greedy(cfg_weight)
    expected = english.reference.generate(text, english.cond, params)
    assert len(expected) >= 50
    assert english.engine.generate(text, english.cond, params) == expected


@pytest.mark.parametrize("cfg_weight", [0.5, 0.0])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_greedy_tokens_equal_torch_engine_multilingual(multilingual: Setup, cfg_weight: float, index: int) -> None:
    text = multilingual.tokens(index)
    params = greedy(cfg_weight)
    expected = multilingual.reference.generate(text, multilingual.cond, params)
    assert len(expected) >= 50
    assert multilingual.engine.generate(text, multilingual.cond, params) == expected


def test_repetition_penalty_reaches_the_logits(english: Setup) -> None:
    # Without the penalty a greedy random model falls into loops; the penalty must change the tokens, identically.
    text = english.tokens(0)
    plain, penalised = greedy(0.5, repetition_penalty=1.0), greedy(0.5, repetition_penalty=2.0)
    a, b = english.engine.generate(text, english.cond, plain), english.engine.generate(text, english.cond, penalised)
    assert a != b
    assert a == english.reference.generate(text, english.cond, plain)
    assert b == english.reference.generate(text, english.cond, penalised)


# --------------------------------------------------------------------------------------------- sampling
def test_seeded_sampling_is_reproducible(english: Setup) -> None:
    text = english.tokens(0)
    params = SamplingParams(seed=1234, max_new_tokens=40)
    first = english.engine.generate(text, english.cond, params)
    assert english.engine.generate(text, english.cond, params) == first
    assert len(first) == 40
    other = english.engine.generate(text, english.cond, SamplingParams(seed=99, max_new_tokens=40))
    assert other != first
    assert all(0 <= t < english.config.speech_tokens_dict_size for t in first + other)


def test_max_new_tokens_ends_the_request(english: Setup) -> None:
    text = english.tokens(2)
    for n in (1, 7):
        assert len(english.engine.generate(text, english.cond, greedy(0.5, max_new_tokens=n))) == n
        assert len(english.engine.generate(text, english.cond, SamplingParams(max_new_tokens=n))) == n


def test_requests_beyond_max_model_len_are_refused_clearly(english: Setup) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        english.engine.generate(english.tokens(0), english.cond, greedy(0.5, max_new_tokens=500))
    with pytest.raises(ValueError, match="start with"):
        english.engine.generate(torch.tensor([5, 6, 7]), english.cond, greedy(0.5))


# ------------------------------------------------------------------------------------------ concurrency
def test_eight_concurrent_requests_get_their_solo_tokens(english: Setup) -> None:
    jobs = [(i % 3, greedy([0.5, 0.0, 0.9, 0.3][i % 4], max_new_tokens=50 + 3 * i)) for i in range(8)]
    solo = [english.reference.generate(english.tokens(i), english.cond, p) for i, p in jobs]

    async def run_all() -> list[list[int]]:
        async def one(i: int, p: SamplingParams) -> list[int]:
            return [t async for t in english.engine.stream_async(english.tokens(i), english.cond, p)]

        return await asyncio.gather(*(one(i, p) for i, p in jobs))

    assert asyncio.run(run_all()) == solo


def test_threads_share_the_engine(english: Setup) -> None:
    results: dict[int, list[int]] = {}
    params = greedy(0.5, max_new_tokens=30)

    def worker(i: int) -> None:
        results[i] = english.engine.generate(english.tokens(i % 2), english.cond, params)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    expected = [english.reference.generate(english.tokens(i), english.cond, params) for i in range(2)]
    assert [results[i] for i in range(4)] == [expected[i % 2] for i in range(4)]


def _wait_until_idle(engine: VLLMT3Engine, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.num_unfinished_requests() == 0


def _kv_cache_usage() -> float | None:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("vllm:kv_cache_usage_perc", {"model_name": "chatterbox-t3", "engine": "0"})
    return value


def test_closing_a_stream_aborts_and_frees_the_request(english: Setup) -> None:
    text = english.tokens(1)
    stream = english.engine.stream(text, english.cond, SamplingParams(max_new_tokens=400, seed=5))
    got = [next(stream) for _ in range(3)]
    assert english.engine.num_unfinished_requests() == 1
    stream.close()
    _wait_until_idle(english.engine)
    # The freed slot serves the next request normally.
    params = greedy(0.5, max_new_tokens=20)
    assert english.engine.generate(text, english.cond, params) == english.reference.generate(text, english.cond, params)
    assert len(got) == 3


def test_cancelling_an_async_consumer_frees_the_request(english: Setup) -> None:
    text = english.tokens(0)

    async def scenario() -> list[int]:
        seen: list[int] = []

        async def consume() -> None:
            async for token in english.engine.stream_async(text, english.cond, SamplingParams(max_new_tokens=400)):
                seen.append(token)

        task = asyncio.create_task(consume())
        while len(seen) < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert len(asyncio.run(scenario())) >= 5
    _wait_until_idle(english.engine)
    usage = _kv_cache_usage()
    if usage is not None:  # the metric exists in every supported vLLM; its absence is not what this test checks
        deadline = time.monotonic() + 10
        while usage and time.monotonic() < deadline:
            time.sleep(0.1)
            usage = _kv_cache_usage()
        assert usage == 0.0


def test_a_consumer_loop_that_ends_mid_stream_leaves_no_error_behind(
    english: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's loop may close while its request is still in the engine (a benchmark's asyncio.run returning with
    a stream half read): the request is aborted and its last hand-over, to a closed loop, is dropped quietly."""
    text = english.tokens(0)

    async def read_three() -> list[int]:
        stream = english.engine.stream_async(text, english.cond, SamplingParams(max_new_tokens=400))
        return [await anext(stream) for _ in range(3)]  # the generator is left open: asyncio.run closes it

    with caplog.at_level(logging.ERROR):
        assert len(asyncio.run(read_three())) == 3
        _wait_until_idle(english.engine)
        gc.collect()
    assert "never retrieved" not in caplog.text and "Event loop is closed" not in caplog.text


def test_generate_async_gives_the_streams_tokens_at_once(english: Setup) -> None:
    params = [SamplingParams(seed=7 + i, max_new_tokens=20 + 5 * i) for i in range(4)]

    async def run_all() -> list[list[int]]:
        return await asyncio.gather(*(english.engine.generate_async(english.tokens(i % 3), english.cond, p)
                                      for i, p in enumerate(params)))  # fmt: skip

    together = asyncio.run(run_all())
    alone = [english.engine.generate(english.tokens(i % 3), english.cond, p) for i, p in enumerate(params)]
    assert together == alone
    assert [len(t) for t in together] == [20, 25, 30, 35]


def test_cancelling_generate_async_frees_the_request(english: Setup) -> None:
    start = time.monotonic()
    whole = english.engine.generate(english.tokens(2), english.cond, greedy(0.5, max_new_tokens=400))
    whole_s = time.monotonic() - start
    assert len(whole) == 400  # greedy on this text never samples the stop token: the request runs to its cap

    async def scenario() -> None:
        task = asyncio.create_task(
            english.engine.generate_async(english.tokens(2), english.cond, greedy(0.5, max_new_tokens=400))
        )
        deadline = time.monotonic() + 30
        while english.engine.num_unfinished_requests() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert english.engine.num_unfinished_requests() == 1  # decoding
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    cancelled = time.monotonic()
    _wait_until_idle(english.engine)
    assert time.monotonic() - cancelled < whole_s / 2  # aborted, not decoded to its end


# ----------------------------------------------------------------------------------------------- stop
@pytest.fixture(scope="module")
def stop_prone(english_tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """The English tiny checkpoint with the stop token's head row copied from a frequent token, scaled up, so
    greedy decoding reaches the stop token after some tokens."""
    directory = tmp_path_factory.mktemp("stop-prone")
    for item in english_tiny_checkpoint.iterdir():
        if item.is_file():
            shutil.copy(item, directory / item.name)
    layout = LAYOUTS["english"]
    weights = load_file(directory / layout.t3)
    config = load_model_config(directory, layout).t3
    reference = TorchT3Engine(load_t3(directory / layout.t3, config).eval())
    cond = Conditionals.load(directory / layout.conds).t3
    tokenizer = EnglishTokenizer.from_file(directory / layout.text_tokenizer)
    text = encode(tokenizer, TEXTS["english"][0])
    tokens = reference.generate(text, cond, greedy(0.5, max_new_tokens=40))
    head = weights["speech_head.weight"]
    head[config.stop_speech_token] = 1.5 * head[tokens[20]]
    save_file(weights, str(directory / layout.t3))
    setup = Setup(directory, "english", tmp_path_factory.mktemp("vllm-cache"))
    yield setup
    setup.engine.shutdown()


def test_stop_token_ends_the_request(stop_prone: Setup) -> None:
    text = stop_prone.tokens(0)
    params = greedy(0.5, max_new_tokens=200)
    expected = stop_prone.reference.generate(text, stop_prone.cond, params)
    assert 0 < len(expected) < 200  # the reference stopped on the stop token
    got = stop_prone.engine.generate(text, stop_prone.cond, params)
    assert got == expected
    assert stop_prone.config.stop_speech_token not in got
    _wait_until_idle(stop_prone.engine)


# ------------------------------------------------------------------------------------------ integration
def test_chatterbox_tts_speaks_the_same_through_either_engine(english: Setup, english_tiny_checkpoint: Path) -> None:
    import numpy as np

    from chatterbox_vllm.tts import ChatterboxTTS

    tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")
    kwargs = {"temperature": 0.0, "seed": 0, "max_new_tokens": 30}
    through_torch = tts.generate("Hello world.", **kwargs)
    tts.engine = english.engine
    through_vllm = tts.generate("Hello world.", **kwargs)
    assert through_vllm.shape == through_torch.shape and through_vllm.size > 0
    assert np.array_equal(through_vllm, through_torch)


def test_engine_protocol(english: Setup) -> None:
    assert isinstance(english.engine, T3Engine) and english.engine.name == "vllm" and english.engine.concurrent
    assert english.engine.num_unfinished_requests() == 0


def test_the_engine_runs_with_the_options_compile_switch_and_cache_dir(english: Setup) -> None:
    """VLLMOptions' compile switch is in the model config of vLLM's engine (where the model class reads it), and
    T3's model directory was written under the options' cache directory."""
    assert getattr(english.engine.llm.model_config.hf_config, T3_COMPILE) is OPTIONS.compile is True
    assert english.engine.options.cache_dir is not None
    assert Path(english.engine.llm.model_config.model).is_relative_to(english.engine.options.cache_dir / "vllm-t3")


def test_engine_choice() -> None:
    from chatterbox_vllm.engine.factory import resolve_engine_kind

    assert resolve_engine_kind("torch") == "torch"
    assert resolve_engine_kind("vllm") == "vllm"
    assert resolve_engine_kind("auto") == "vllm"  # vLLM is installed and imports here
    with pytest.raises(ValueError, match="auto, vllm, torch"):
        resolve_engine_kind("tensorrt")


def test_a_burst_of_seeded_long_prompts_leaves_the_engine_alive(english: Setup) -> None:
    """vLLM's CPU backend dies when a seeded request's prefill is split across steps (it rewinds the request's
    generator, which CPU generators cannot do; seen with 64 seeded streams at once, BENCHMARKS.md 2026-11-28 (b)).
    Prompts are prefilled whole on CPU, so a burst of seeded requests whose prompts together exceed one step's
    budget decodes, each as it would alone."""
    scheduler = english.engine.llm.vllm_config.scheduler_config
    assert scheduler.enable_chunked_prefill is False
    text = encode(english.tokenizer, "A long prompt for the scheduler, said again and again. " * 7)
    prompt = english.config.cond_len + text.numel() + 2
    requests = 8
    assert prompt * requests > scheduler.max_num_batched_tokens  # the burst cannot be prefilled in one step
    params = [SamplingParams(seed=100 + i, max_new_tokens=6) for i in range(requests)]

    async def run_all() -> list[list[int]]:
        async def one(p: SamplingParams) -> list[int]:
            return [t async for t in english.engine.stream_async(text, english.cond, p)]

        return await asyncio.gather(*(one(p) for p in params))

    burst = asyncio.run(run_all())
    assert burst == [english.engine.generate(text, english.cond, p) for p in params]
    assert all(len(tokens) == 6 for tokens in burst)
