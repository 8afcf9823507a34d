"""What every T3 decode engine (PyTorch, vLLM) offers, and the sampling settings it honours."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..models.t3 import T3Cond
from ..models.t3.config import T3Config

# S3 speech tokens are 0..6560; T3's vocabulary adds start (6561), stop (6562) and unused ids up to 8193.
S3_VOCAB_SIZE = 6561


@dataclass(frozen=True)
class SamplingParams:
    """Per-request T3 sampling settings (defaults = the reference's English `generate`).

    `repetition_penalty` is 1.2 for both variants: chatterbox-tts 0.1.7 used 2.0 for the multilingual model, and
    upstream lowered it to 1.2 when it removed the alignment analyzer (resemble-ai/chatterbox 3f35dfc).
    """

    temperature: float = 0.8  # 0 = greedy (not in the reference; for tests and deterministic output)
    top_p: float = 1.0
    top_k: int = 0  # 0 = off; Turbo and Nano sample from the 1000 most likely tokens
    min_p: float = 0.05
    repetition_penalty: float = 1.2
    cfg_weight: float = 0.5
    max_new_tokens: int = 1000
    seed: int | None = None

    def __post_init__(self) -> None:
        def finite(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        if finite("temperature") < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < finite("top_p") <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= finite("min_p") <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if finite("repetition_penalty") <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if finite("cfg_weight") < 0:
            raise ValueError(f"cfg_weight must be >= 0, got {self.cfg_weight}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")

    @classmethod
    def turbo(cls, **overrides: object) -> SamplingParams:
        """The reference's Turbo/Nano `generate` defaults: no CFG and no min-p (it ignores both), top-k 1000,
        top-p 0.95."""
        values: dict[str, object] = dict(temperature=0.8, top_k=1000, top_p=0.95, min_p=0.0, repetition_penalty=1.2,
                                         cfg_weight=0.0)  # fmt: skip
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def greedy(self) -> bool:
        """temperature 0: take the most likely token after CFG and the repetition penalty (no sampling, no seed)."""
        return self.temperature == 0

    @property
    def uses_cfg(self) -> bool:
        """cfg_weight 0 makes the CFG formula return the conditional logits, so no unconditional row is needed."""
        return self.cfg_weight > 0


@runtime_checkable
class T3Engine(Protocol):
    """Turns text tokens + a voice into S3 speech tokens. Both engines (PyTorch, vLLM) implement all of it: the
    server calls the async surface from its event loop, scripts and tests the synchronous one."""

    name: str  # "vllm" | "torch": what /health reports
    # Whether requests decode side by side (vLLM batches them): the server then runs a long input's pieces in
    # parallel and streams a piece's audio while its tokens arrive. The PyTorch engine decodes one request at a
    # time, so there the server takes one piece after another.
    concurrent: bool

    def generate(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
        """text_tokens: [L], including the start/stop text tokens. Returns the sampled speech tokens without the
        stop token (ids >= 6561 other than stop may appear; see `speech_tokens_for_s3gen`)."""
        ...

    def stream(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> Iterator[int]:
        """The same tokens as `generate`, yielded as they are sampled. Closing the iterator early stops the
        request."""
        ...

    async def generate_async(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
        """`generate` for a caller on an event loop, which the decoding never blocks. Cancelling it stops the
        request."""
        ...

    def stream_async(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> AsyncIterator[int]:
        """`stream` for a caller on an event loop. Closing it early (or cancelling its consumer) stops the request."""
        ...

    def num_unfinished_requests(self) -> int:
        """Requests the engine holds, queued or decoding (the server's engine gauge)."""
        ...

    def shutdown(self) -> None:
        """Release the engine's resources (processes, device memory)."""
        ...


def speech_tokens_for_s3gen(tokens: Iterable[int]) -> list[int]:
    """Keep only real S3 tokens (< 6561): what S3Gen's 6561-row embedding accepts.

    The reference's English path does the same (`speech_tokens[speech_tokens < 6561]`); 0.1.7's multilingual path
    skips it and crashes in S3Gen when T3 samples an unused id.
    """
    return [int(t) for t in tokens if 0 <= int(t) < S3_VOCAB_SIZE]


def check_text_tokens(text_tokens: torch.Tensor, config: T3Config) -> torch.Tensor:
    """One request's text tokens ([L] or [1, L]) as a long tensor; else ValueError. Llama T3 takes them between its
    start/stop text tokens; GPT-2 T3 (Turbo, Nano) takes GPT-2's ids as they are, with no markers."""
    tokens = torch.as_tensor(text_tokens).to(dtype=torch.long)
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if not config.wraps_text:
        if tokens.dim() != 1 or tokens.numel() < 1:
            raise ValueError(f"text_tokens must be one non-empty sequence [L], got {tuple(tokens.shape)}")
    else:
        if tokens.dim() != 1 or tokens.numel() < 2:
            raise ValueError(f"text_tokens must be one sequence [L] with start/stop tokens, got {tuple(tokens.shape)}")
        if int(tokens[0]) != config.start_text_token or int(tokens[-1]) != config.stop_text_token:
            raise ValueError(
                f"text_tokens must start with {config.start_text_token} and end with {config.stop_text_token} "
                f"(got {int(tokens[0])} ... {int(tokens[-1])})"
            )
    if int(tokens.min()) < 0 or int(tokens.max()) >= config.text_tokens_dict_size:
        raise ValueError(f"text token ids must lie in [0, {config.text_tokens_dict_size})")
    limit = text_token_limit(config)
    if tokens.numel() > limit:
        raise ValueError(f"text is {tokens.numel()} tokens long; T3 takes at most {limit}")
    return tokens


def text_token_limit(config: T3Config) -> int:
    """The longest text T3 reads: its text position table (Llama T3), or what GPT-2's position table leaves after
    the conditioning prefix, the start-of-speech token and at least one generated token."""
    if config.backbone_positions:
        return config.n_positions - config.cond_len - 2
    return config.text_pos_emb_size


def prompt_length(config: T3Config, cond: T3Cond, text_len: int) -> int:
    """Embeddings before the first sampled token: conditioning, text and the start-of-speech token(s)."""
    prompt = cond.cond_prompt_speech_tokens
    prompt_tokens = 0 if prompt is None else int(prompt.shape[-1])
    cond_len = 1 + (config.perceiver_query_tokens if config.use_perceiver_resampler and prompt is not None
                    else prompt_tokens) + (1 if config.emotion_adv else 0)  # fmt: skip
    return cond_len + text_len + config.speech_start_rows


def speech_token_limit(config: T3Config, prompt_len: int = 0) -> int:
    """The most tokens T3 may generate: its speech position table (Llama T3), or GPT-2's positions left after a
    prompt of `prompt_len` embeddings."""
    if config.backbone_positions:
        return config.n_positions - prompt_len
    return config.speech_pos_emb_size


# The end of a request's tokens, put after the last one by the thread that produces them.
TOKENS_DONE = object()


async def drain_tokens(box: asyncio.Queue) -> AsyncIterator[int]:
    """The tokens a producer thread puts in `box` (on the caller's loop) up to TOKENS_DONE; an exception it puts
    there is raised here."""
    while True:
        item = await box.get()
        if item is TOKENS_DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
