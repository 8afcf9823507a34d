"""The languages Chatterbox speaks, and the check every request's language goes through."""

from __future__ import annotations

import re

SUPPORTED_LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "ms": "Malay",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "sv": "Swedish",
    "sw": "Swahili",
    "tr": "Turkish",
    "zh": "Chinese",
}


class UnsupportedLanguageError(ValueError):
    """A language id the loaded model cannot speak; the message lists the ones it can."""


def validate_language(language_id: str | None, *, multilingual: bool) -> str:
    """Normalise a language id to one of ours; None or blank means English. Raises UnsupportedLanguageError.

    Case and surrounding blanks are ignored ("FR " -> "fr"), and a region or script subtag is dropped when
    the primary tag is supported ("pt-BR", "zh_Hant" -> "pt", "zh"): clients often send BCP 47 tags.
    The reference, given no language, adds no language token at all; the model was trained with one, so we
    default to English instead.
    """
    if language_id is None:
        return "en"
    if not isinstance(language_id, str):
        raise UnsupportedLanguageError(f"language_id must be a string, got {type(language_id).__name__}")
    language = language_id.strip().lower()
    if not language:
        return "en"
    if language not in SUPPORTED_LANGUAGES:
        primary = re.split(r"[-_]", language, maxsplit=1)[0]
        if primary in SUPPORTED_LANGUAGES:
            language = primary
    if multilingual:
        if language in SUPPORTED_LANGUAGES:
            return language
        ids = ", ".join(SUPPORTED_LANGUAGES)
        raise UnsupportedLanguageError(f"unsupported language_id {language_id!r}; supported: {ids}")
    if language == "en":
        return language
    raise UnsupportedLanguageError(
        f"the English model speaks only 'en', not {language_id!r}; load the multilingual model for "
        f"{', '.join(SUPPORTED_LANGUAGES)}"
    )
