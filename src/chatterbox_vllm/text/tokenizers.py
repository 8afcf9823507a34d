"""Text -> T3 text-token ids for the English and the multilingual model."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..checkpoint.weights import CheckpointError
from .multilingual import CangjieConverter, hebrew_diacritics, japanese_to_kana, korean_to_jamo, russian_stress

START_TEXT_TOKEN = 255
STOP_TEXT_TOKEN = 0
SPACE = "[SPACE]"
UNK = "[UNK]"
STOP = "[STOP]"
_REQUIRED_TOKENS = ("[START]", "[STOP]")


def text_token_ids(ids: list[int]) -> list[int]:
    """T3's text input: the start token, the text, the stop token."""
    return [START_TEXT_TOKEN, *ids, STOP_TEXT_TOKEN]


def _decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Ids back to text the way the reference decodes: the tokenizer's pieces joined, [SPACE] -> " ",
    [STOP] and [UNK] dropped. For logs and debugging; T3 never needs it."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    return text.replace(" ", "").replace(SPACE, " ").replace(STOP, "").replace(UNK, "")


def _load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception subclasses
        raise CheckpointError(f"{path}: cannot read tokenizer ({exc})") from exc
    vocab = tokenizer.get_vocab()
    missing = [t for t in _REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise CheckpointError(f"{path}: tokenizer lacks {', '.join(missing)}")
    return tokenizer


class EnglishTokenizer:
    """The English model's BPE tokenizer; spaces are spelled as the [SPACE] token."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> EnglishTokenizer:
        return cls(_load_tokenizer(path))

    def prepare(self, text: str) -> str:
        return text.replace(" ", SPACE)

    def encode(self, text: str) -> list[int]:
        """Token ids of already normalised text; characters outside the vocabulary become [UNK] (id 1)."""
        return self.tokenizer.encode(self.prepare(text)).ids

    def decode(self, ids: list[int]) -> str:
        return _decode(self.tokenizer, ids)


class MultilingualTokenizer:
    """The multilingual grapheme tokenizer with its per-language preparation and `[lang]` prefix."""

    def __init__(self, tokenizer: Tokenizer, cangjie: CangjieConverter, dicta_model: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.cangjie = cangjie
        self.dicta_model = dicta_model

    @classmethod
    def from_files(
        cls,
        grapheme_path: str | Path,
        cangjie_path: str | Path | None,
        *,
        segmenter: Any = "auto",
        dicta_model: str | Path | None = None,
    ) -> MultilingualTokenizer:
        """`segmenter`: Chinese word segmenter ("auto": spacy-pkuseg if installed and its model is cached).
        `dicta_model`: dicta-onnx's model file for Hebrew diacritics (CHATTERBOX_DICTA_MODEL; None: none added)."""
        cangjie = CangjieConverter(cangjie_path, segmenter=segmenter)
        return cls(_load_tokenizer(grapheme_path), cangjie, str(dicta_model) if dicta_model else None)

    def prepare(self, text: str, language_id: str | None) -> str:
        """The string the tokenizer sees: lowercased, NFKD, language-specific form, `[lang]` prefix, [SPACE]s.

        `language_id` None adds no language token (as the reference); the product passes a validated id.
        """
        # The reference lowercases the id in generate(), before its tokenizer compares it; we do it here.
        language_id = language_id.lower() if language_id else None
        text = unicodedata.normalize("NFKD", text.lower())
        if language_id == "zh":
            text = self.cangjie(text)
        elif language_id == "ja":
            text = japanese_to_kana(text)
        elif language_id == "he":
            text = hebrew_diacritics(text, self.dicta_model)
        elif language_id == "ko":
            text = korean_to_jamo(text)
        elif language_id == "ru":
            text = russian_stress(text)
        if language_id:
            text = f"[{language_id}]{text}"
        return text.replace(" ", SPACE)

    def encode(self, text: str, language_id: str | None) -> list[int]:
        """Token ids of already normalised text; characters outside the vocabulary become [UNK] (id 1)."""
        return self.tokenizer.encode(self.prepare(text, language_id)).ids

    def decode(self, ids: list[int]) -> str:
        return _decode(self.tokenizer, ids)
