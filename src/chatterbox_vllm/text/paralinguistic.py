"""Paralinguistic tags ("[laugh]", "[sigh]", ...): native tokens for Turbo/Nano, removed for the other models.

Sources for the tag set (see also checkpoint/data/gpt2/README.md):
* `ResembleAI/chatterbox-turbo` ships 19 tags in `added_tokens.json` with ids 50257-50275
  (resemble-ai/chatterbox issue #557; the reference checks `len(tokenizer) == 50276` = 50257 + 19);
* the 9 sound tags are the reference demo's `EVENT_TAGS` (`gradio_tts_turbo_app.py`), the other 10 are the
  "delivery" tokens listed from the same file in jamiepine/voicebox issue #1110.
Which id each tag has is read from the checkpoint's `added_tokens.json` (`GPT2TextTokenizer.tag_ids`), never here.

The reference tokenizer matches a tag only exactly (case-sensitive), anywhere, even glued to words: "Hi[laugh]there"
is three tokens, while "[Laugh]" or an unknown "[giggle]" is plain text, byte-pair encoded and so read aloud.
Turbo/Nano therefore get the text unchanged (parity); for the English and multilingual models, which have no such
tokens, `strip_tags` removes the known tags (any case) and nothing else ("[1]", "[citation needed]" stay).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOUND_TAGS: tuple[str, ...] = (
    "[laugh]",
    "[chuckle]",
    "[sigh]",
    "[gasp]",
    "[cough]",
    "[clear throat]",
    "[sniff]",
    "[groan]",
    "[shush]",
)
STYLE_TAGS: tuple[str, ...] = (
    "[whispering]",
    "[angry]",
    "[happy]",
    "[sarcastic]",
    "[surprised]",
    "[fear]",
    "[crying]",
    "[dramatic]",
    "[narration]",
    "[advertisement]",
)
TURBO_TAGS: tuple[str, ...] = SOUND_TAGS + STYLE_TAGS

# Longest first, so that a longer tag wins over a prefix of it (none today, but cheap to keep right).
_ALTERNATION = "|".join(re.escape(t) for t in sorted(TURBO_TAGS, key=len, reverse=True))
_EXACT = re.compile(_ALTERNATION)
_ANY_CASE = re.compile(_ALTERNATION, re.IGNORECASE)
_BRACKETED = re.compile(r"\[[^\[\]\n]{1,64}\]")
_HSPACE = " \t"
_SOFT_PUNCT = ",;:"
_CLOSING_PUNCT = ".,!?;:…)]}"


@dataclass(frozen=True)
class TagMatch:
    """One tag occurrence: the canonical tag, its span, and the text as written."""

    tag: str
    start: int
    end: int
    written: str


def supports_tags(variant: str) -> bool:
    """Whether the family called `variant` has the tags as tokens (`ModelFamily.paralinguistic_tags`)."""
    from ..families import get

    return get(variant).paralinguistic_tags


def find_tags(text: str, *, ignore_case: bool = False) -> list[TagMatch]:
    """Known tags in `text`, in order. Exact case by default, as the reference tokenizer matches them."""
    pattern = _ANY_CASE if ignore_case else _EXACT
    return [TagMatch(m.group(0).lower(), m.start(), m.end(), m.group(0)) for m in pattern.finditer(text)]


def find_unknown_bracketed(text: str) -> list[str]:
    """Bracketed words that are not exact tags ("[giggle]", "[Laugh]", "[1]"): Turbo reads these aloud."""
    return [m.group(0) for m in _BRACKETED.finditer(text) if m.group(0) not in TURBO_TAGS]


def _join(left: str, right: str, had_space: bool) -> str:
    """Join the text around a removed tag without double spaces, space before punctuation or doubled commas."""
    left = left.rstrip(_HSPACE)
    right = right.lstrip(_HSPACE)
    if not left:
        # A tag opening the text: drop the pause punctuation that belonged to it ("[sigh], well") and blank lines.
        return right.lstrip(_SOFT_PUNCT + " \t\r\n")
    if left.endswith("\n"):
        # A tag opening a line; a tag alone on its line leaves no blank line behind.
        right = right.lstrip(_SOFT_PUNCT + _HSPACE)
        return left + (right[1:] if right.startswith("\n") else right)
    if not right or right.startswith("\n"):
        return left + right
    if right[0] in _CLOSING_PUNCT:
        if right[0] in _SOFT_PUNCT and left[-1] in _CLOSING_PUNCT:
            right = right[1:].lstrip(_HSPACE)  # "Well, [sigh], okay" -> "Well, okay"
            return left + (" " + right if right and right[0] not in _CLOSING_PUNCT else right)
        if left[-1] in _SOFT_PUNCT:
            left = left[:-1]  # "Wait, [laugh]. Okay" -> "Wait. Okay"
        return left + right
    glued_words = left[-1].isalnum() and right[0].isalnum()
    return left + (" " if had_space or glued_words else "") + right


def strip_tags(text: str, *, ignore_case: bool = True) -> tuple[str, list[str]]:
    """Remove the known tags (for models without them); returns the clean text and the removed tags in order.

    Only the 19 tags are removed, in any case unless `ignore_case` is False; other bracketed text stays. Spacing
    and punctuation around each removal are tidied; the rest of the text is left exactly as it was. Text made only
    of tags comes back empty (callers refuse empty text).
    """
    matches = find_tags(text, ignore_case=ignore_case)
    if not matches:
        return text, []
    result = text[: matches[0].start]
    had_space = False
    for index, match in enumerate(matches):
        end = matches[index + 1].start if index + 1 < len(matches) else len(text)
        piece = text[match.end : end]
        had_space = had_space or result[-1:] in (" ", "\t") or piece[:1] in (" ", "\t")
        if index + 1 < len(matches) and not piece.strip(_HSPACE):
            continue  # only spaces between two tags: carry on to the next piece
        result = _join(result, piece, had_space)
        had_space = False
    return result.strip(), [m.tag for m in matches]


def prepare_tags(text: str, variant: str) -> tuple[str, list[str]]:
    """Text for `variant`: unchanged for Turbo/Nano (the tags are tokens), tags stripped for the others."""
    if supports_tags(variant):
        return text, []
    return strip_tags(text)
