"""T3's stage: text -> T3's text tokens -> speech tokens, with the family's sampling rules.

The first of the pipeline's three stages (voice conditioning is `conditioning.VoiceConditioner`, vocoding
`vocoder.Vocoder`). It owns what a request's text and settings become before T3 decodes: validation, the language,
normalisation, paralinguistic tags, the tokenizer, the family's sampling defaults (and the settings it ignores or
refuses), each piece's token limit; then it hands the tokens to the T3 engine. The server calls these pieces on their
own (it decodes through the engine's async surface); `speech_tokens` is the synchronous whole for scripts.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from .checkpoint.config import ModelConfig
from .engine.base import SamplingParams, T3Engine
from .families import ModelFamily
from .models.t3 import T3Cond
from .text.gpt2 import GPT2TextTokenizer
from .text.languages import validate_language
from .text.normalize import punc_norm, validate_text
from .text.paralinguistic import prepare_tags
from .text.tokenizers import EnglishTokenizer, MultilingualTokenizer, text_token_ids

log = logging.getLogger(__name__)

TextTokenizer = EnglishTokenizer | MultilingualTokenizer | GPT2TextTokenizer


class UnsupportedSettingError(ValueError):
    """A generation setting the loaded model does not have; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class T3Stage:
    """A loaded T3 engine with its text front end: text and request settings in, speech tokens out."""

    def __init__(
        self, *, engine: T3Engine, tokenizer: TextTokenizer, family: ModelFamily, config: ModelConfig,
        device: torch.device,
    ) -> None:  # fmt: skip
        """`config`: the checkpoint's (a random checkpoint's records the speaking pace its pieces stop at)."""
        self.engine = engine
        self.tokenizer = tokenizer
        self.family = family
        self.config = config
        self.device = device

    def text_tokens(self, text: str, language_id: str | None = None) -> torch.Tensor:
        """T3's text input: Llama T3 [start] + tokens of the normalised text + [stop]; GPT-2 T3 (Turbo, Nano) the
        GPT-2 ids of the text normalised as its reference does. Paralinguistic tags ([laugh], [sigh], ...) pass
        through to Turbo and Nano; other models would read them aloud, so they are removed, with a warning."""
        validate_text(text)
        family = self.family
        language = validate_language(language_id, multilingual=family.multilingual)
        text, removed = prepare_tags(text, family.name)
        if removed:
            log.warning("the %s model has no paralinguistic tags: removed %s", family.name, ", ".join(removed))
            if not text.strip():
                raise ValueError("the text holds nothing but paralinguistic tags, which this model does not speak")
        if isinstance(self.tokenizer, GPT2TextTokenizer):
            return torch.tensor(self.tokenizer.encode(punc_norm(text, turbo=True)), dtype=torch.long)
        normalised = punc_norm(text, multilingual=family.multilingual)
        if isinstance(self.tokenizer, MultilingualTokenizer):
            ids = self.tokenizer.encode(normalised, language)
        else:
            ids = self.tokenizer.encode(normalised)
        return torch.tensor(text_token_ids(ids), dtype=torch.long)

    def sampling_params(self, **settings: float | int | None) -> SamplingParams:
        """The family's sampling defaults with the given settings (None = the default) in their place. Settings the
        family ignores are dropped (Turbo and Nano: `cfg_weight`, `min_p`, as their reference does); one it refuses
        raises `UnsupportedSettingError`."""
        given = {name: value for name, value in settings.items() if value is not None}
        ignored = sorted(name for name in self.family.ignored_settings if given.pop(name, 0))
        if ignored:
            log.debug("the %s model ignores %s", self.family.name, ", ".join(ignored))
        for name, why in self.family.unsupported_settings.items():
            if given.get(name):
                raise UnsupportedSettingError(name, why)
        return self.family.sampling_defaults(**given)

    def piece_params(self, text_tokens: torch.Tensor, params: SamplingParams) -> SamplingParams:
        """`params` for one text piece. A random checkpoint's T3 never samples the stop token: its pieces stop at
        the speaking pace the checkpoint records (`ModelConfig.speech_tokens_per_text_token`), about as long as the
        text would take to say, rather than at max_new_tokens. Other checkpoints: `params` as they are."""
        pace = self.config.speech_tokens_per_text_token
        if pace is None:
            return params
        limit = max(1, math.ceil(pace * text_tokens.numel()))
        return dataclasses.replace(params, max_new_tokens=limit) if limit < params.max_new_tokens else params

    def speech_tokens(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
        """One piece decoded by T3 (synchronously) under `piece_params`: its speech tokens, without the stop token."""
        return self.engine.generate(text_tokens.to(self.device), cond, self.piece_params(text_tokens, params))

    def close(self) -> None:
        """Stop the engine (vLLM runs its engine core in a process of its own)."""
        self.engine.shutdown()
