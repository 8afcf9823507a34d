"""Pure-PyTorch T3 decoding with a KV cache: the reference's `T3.inference` loop, one request at a time.

CFG runs as a batch of two rows (conditional, unconditional) that share every sampled token. Differences from
chatterbox-tts 0.1.7, following later upstream fixes (resemble-ai/chatterbox 3f35dfc, "Remove alignment analyzer;
lower rep_penalty default to 1.2"):
* the multilingual model decodes without the AlignmentStreamAnalyzer, so its backbone keeps SDPA attention and no
  EOS suppression/forcing is applied to the logits (0.1.7 switched to eager attention and hooked 3 heads);
* the multilingual default repetition penalty is 1.2 (see `SamplingParams`), not 2.0.

GPT-2 T3 (Turbo, Nano) follows `T3.inference_turbo` instead: one row (no CFG, whatever `cfg_weight` says, as the
reference ignores it) and Turbo's logits chain (`sampling.turbo_sampling_probs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import torch

from ..models.t3 import T3, T3Cond
from .base import TOKENS_DONE, SamplingParams, check_text_tokens, drain_tokens, prompt_length, speech_token_limit
from .sampling import (
    apply_cfg,
    greedy_token,
    make_generator,
    sampling_probs,
    turbo_penalty_history,
    turbo_processed_logits,
    turbo_sampling_probs,
)


class TorchT3Engine:
    """One request at a time on the torch model (its KV cache is the request's own); the async calls run that
    decoding on a worker thread, one after another, so an event loop never waits on it."""

    name = "torch"
    concurrent = False

    def __init__(self, model: T3, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else model.device
        if model.device != self.device:
            self.model = model.to(self.device)
        self.config = model.config
        self._decoding = threading.Lock()  # async callers decode one after another
        self._count_lock = threading.Lock()
        self._unfinished = 0

    def shutdown(self) -> None:
        """Nothing to release: the model lives as long as its owner."""

    def generate(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
        return list(self.stream(text_tokens, cond, params))

    async def generate_async(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
        stop = threading.Event()  # set when the caller is cancelled: the thread stops at its next token

        def run() -> list[int]:
            with self._turn():
                tokens = []
                for token in self.stream(text_tokens, cond, params):
                    if stop.is_set():
                        break
                    tokens.append(token)
                return tokens

        try:
            return await asyncio.to_thread(run)
        finally:
            stop.set()

    async def stream_async(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        box: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def deliver(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody reads
                loop.call_soon_threadsafe(box.put_nowait, item)

        def produce() -> None:
            try:
                with self._turn():
                    for token in self.stream(text_tokens, cond, params):
                        if stop.is_set():
                            break
                        deliver(token)
            except BaseException as exc:  # noqa: BLE001 - raised to the caller, on its loop
                deliver(exc)
            else:
                deliver(TOKENS_DONE)

        loop.run_in_executor(None, produce)  # its result is what it delivers
        try:
            async for token in drain_tokens(box):
                yield token
        finally:
            stop.set()  # the thread stops at its next token

    def num_unfinished_requests(self) -> int:
        """Async requests waiting for their turn or decoding."""
        return self._unfinished

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Counted as unfinished while waiting for and holding the decoder."""
        with self._count_lock:
            self._unfinished += 1
        try:
            with self._decoding:
                yield
        finally:
            with self._count_lock:
                self._unfinished -= 1

    def stream(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> Iterator[int]:
        text_tokens = self._check_text(text_tokens)
        self._check_length(params.max_new_tokens, prompt_length(self.config, cond, text_tokens.numel()))
        return self._decode(text_tokens, cond, params)

    # ----------------------------------------------------------------------------------------------------
    def _check_text(self, text_tokens: torch.Tensor) -> torch.Tensor:
        return check_text_tokens(text_tokens, self.config).to(self.device)

    def _check_length(self, max_new_tokens: int, prompt_len: int = 0) -> None:
        # Llama T3: generated token i is embedded at speech position i + 1; the last sampled token is never embedded.
        limit = speech_token_limit(self.config, prompt_len)
        if max_new_tokens > limit:
            raise ValueError(f"max_new_tokens={max_new_tokens} exceeds T3's position table ({limit} left)")

    @torch.inference_mode()
    def _decode(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> Iterator[int]:
        if self.config.backbone == "gpt2":
            yield from self._decode_gpt2(text_tokens, cond, params)
            return
        model, cfg = self.model, self.config
        use_cfg = params.uses_cfg
        rows = 2 if use_cfg else 1
        generator = make_generator(params.seed, self.device)

        prefix = model.prefill_embeds(cond.to(self.device), text_tokens, cfg=use_cfg)
        cache = model.new_kv_cache(rows, prefix.shape[1] + params.max_new_tokens)
        hidden = model(prefix, cache)[:, -1:]
        # History for the repetition penalty starts with the start-of-speech token, as in the reference.
        history = torch.full((1 + params.max_new_tokens,), cfg.start_speech_token, dtype=torch.long, device=self.device)

        for step in range(params.max_new_tokens):
            logits = model.speech_logits(hidden[:, -1])  # [rows, vocab]
            if use_cfg:
                logits = apply_cfg(logits[0:1], logits[1:2], params.cfg_weight)
            if params.greedy:
                token = greedy_token(logits, history[: step + 1], params)  # [1, 1]
            else:
                probs = sampling_probs(logits, history[: step + 1], params)
                token = torch.multinomial(probs, num_samples=1, generator=generator)  # [1, 1]
            value = int(token)
            if value == cfg.stop_speech_token:
                return
            yield value
            if step + 1 == params.max_new_tokens:
                return
            history[step + 1] = value
            embeds = model.speech_embeds(token, step + 1).expand(rows, -1, -1)
            hidden = model(embeds, cache)

    def _decode_gpt2(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> Iterator[int]:
        """`inference_turbo`: one row; [cond | text | start-of-speech], then each sampled token's embedding."""
        model, cfg = self.model, self.config
        generator = make_generator(params.seed, self.device)
        prefix = model.prefill_embeds(cond.to(self.device), text_tokens, cfg=False)
        cache = model.new_kv_cache(1, prefix.shape[1] + params.max_new_tokens)
        hidden = model(prefix, cache)[:, -1:]
        generated = torch.empty(params.max_new_tokens, dtype=torch.long, device=self.device)
        for step in range(params.max_new_tokens):
            logits = model.speech_logits(hidden[:, -1])  # [1, vocab]
            history = turbo_penalty_history(cfg.start_speech_token, generated[:step])
            if params.greedy:
                token = turbo_processed_logits(logits, history, params).argmax(dim=-1, keepdim=True)
            else:
                probs = turbo_sampling_probs(logits, history, params)
                token = torch.multinomial(probs, num_samples=1, generator=generator)
            value = int(token)
            if value == cfg.stop_speech_token:
                return
            yield value
            if step + 1 == params.max_new_tokens:
                return
            generated[step] = value
            hidden = model(model.speech_embeds(token, step + 1), cache)
