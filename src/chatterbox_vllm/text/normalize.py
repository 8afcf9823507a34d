"""Text clean-up before tokenization, identical to the reference's `punc_norm`.

The models were trained on text cleaned this way, so deviations change what they say; keep it exact.
"""

from __future__ import annotations

# Replacements in the reference's order (order matters: "..." must go before ":" etc.). Turbo's and Nano's
# reference (`tts_turbo.py`) drops the "...", " - " and ";" rewrites and keeps the rest in the same order.
_TURBO_SKIPS = ("...", " - ", ";")
_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("...", ", "),
    ("…", ", "),
    (":", ","),
    (" - ", ", "),
    (";", ", "),
    ("—", "-"),
    ("–", "-"),
    (" ,", ","),
    ("“", '"'),
    ("”", '"'),
    ("‘", "'"),
    ("’", "'"),
)
_TURBO_REPLACEMENTS = tuple((old, new) for old, new in _REPLACEMENTS if old not in _TURBO_SKIPS)
_ENDERS = (".", "!", "?", "-", ",")
# The multilingual model also accepts CJK sentence enders as final punctuation.
_CJK_ENDERS = ("、", "，", "。", "？", "！")

# What the reference substitutes for empty text; kept for parity, but the product refuses empty text earlier.
EMPTY_TEXT_SENTENCE = "You need to add some text for me to talk."


class EmptyTextError(ValueError):
    """The text has nothing to say."""


def validate_text(text: str) -> None:
    """Refuse text that is not a string or has no visible characters (the reference would speak a canned line)."""
    if not isinstance(text, str):
        raise EmptyTextError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise EmptyTextError("text is empty")


def punc_norm(text: str, *, multilingual: bool = False, turbo: bool = False) -> str:
    """Capitalise, collapse whitespace, map rare punctuation to common forms and ensure final punctuation.
    `turbo`: Turbo's/Nano's variant (fewer rewrites; parity: tests/fixtures/golden/turbo_text)."""
    if len(text) == 0:
        return EMPTY_TEXT_SENTENCE
    if text[0].islower():
        text = text[0].upper() + text[1:]
    text = " ".join(text.split())
    for old, new in _TURBO_REPLACEMENTS if turbo else _REPLACEMENTS:
        text = text.replace(old, new)
    text = text.rstrip(" ")
    enders = _ENDERS + _CJK_ENDERS if multilingual else _ENDERS
    if not text.endswith(enders):
        text += "."
    return text
