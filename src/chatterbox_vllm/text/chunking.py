"""Splitting long input into pieces the model speaks well, one T3 request each.

T3 was trained on short utterances: long text drifts, mumbles or stops early, so the server speaks long input
piece by piece. Pieces end at sentence boundaries where possible (the model's prosody resets at each piece, which
sounds natural after a full stop and odd mid-phrase), short sentences are merged up to the size limit (fewer,
longer pieces sound more fluent), and only a sentence longer than the limit is cut, at a clause mark if one is
near the limit, else between words, else (a run of CJK text, or one huge "word") hard at the limit.

Pieces are slices of the whitespace-normalised text, so nothing is lost or reordered: for space-separated
languages ``" ".join(pieces)`` gives the normalised text back, for CJK ``"".join(pieces)`` does.
"""

from __future__ import annotations

import re

# Enders that close a sentence only before whitespace (or the end), so "3.14" or "file.txt" stay whole.
_LATIN_ENDERS = ".!?…"
# Script enders that close a sentence even with no space after: CJK writes none.
_SCRIPT_ENDERS = "。！？；．｡۔।؟"
_ENDERS = _LATIN_ENDERS + _SCRIPT_ENDERS
# Closing quotes and brackets stay with the sentence they close: `He said "Stop." Then ...`.
_CLOSERS = "\"'”’»)]}」』】》〉›"
_OPENERS = "\"'“‘«([{「『【《〈‹"
# Clause marks a too-long sentence may be cut after: Latin ones only before a space ("1,000" stays whole).
_LATIN_CLAUSE = ",;:—–"
_SCRIPT_CLAUSE = "，、：；،؛"
# Words whose trailing period does not end a sentence (compared lower-case, without the period).
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "prof",
        "sr",
        "jr",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "cf",
        "mt",
        "approx",
        "fig",
        "vol",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    }
)
# Initials and dotted acronyms: "J.", "U.S", "J.R.R".
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")


def split_for_synthesis(text: str, max_chars: int = 300) -> list[str]:
    """Split `text` into pieces of at most `max_chars` characters, at sentence boundaries where possible."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    normalised = " ".join(text.split())
    if not normalised:
        return []
    fragments: list[tuple[int, int]] = []
    for start, end in _sentence_spans(normalised):
        fragments.extend(_split_long(normalised, start, end, max_chars))
    return [normalised[a:b] for a, b in _merge(fragments, max_chars)]


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in whitespace-normalised `text`, without surrounding spaces."""
    spans: list[tuple[int, int]] = []
    start, i, n = 0, 0, len(text)
    while i < n:
        if text[i] not in _ENDERS:
            i += 1
            continue
        j = i
        while j < n and text[j] in _ENDERS:  # "?!", "...", "。」" end together
            j += 1
        run = text[i:j]
        while j < n and text[j] in _CLOSERS:
            j += 1
        unconditional = any(c in _SCRIPT_ENDERS for c in run)
        at_break = j == n or text[j] == " "
        if (unconditional or at_break) and not (run == "." and _is_abbreviation(text, i)):
            _append_span(spans, text, start, j)
            start = j
        i = j
    _append_span(spans, text, start, n)
    return spans


def _is_abbreviation(text: str, period: int) -> bool:
    """Whether the period at `period` ends an abbreviation or initial rather than a sentence."""
    word_start = text.rfind(" ", 0, period) + 1
    word = text[word_start:period].lstrip(_OPENERS)
    return word.lower() in _ABBREVIATIONS or bool(_INITIALS.fullmatch(word))


def _append_span(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    while start < end and text[start] == " ":
        start += 1
    while end > start and text[end - 1] == " ":
        end -= 1
    if start < end:
        spans.append((start, end))


def _split_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut one sentence into parts of at most `max_chars`: after a clause mark, else at a space, else hard."""
    parts: list[tuple[int, int]] = []
    while end - start > max_chars:
        cut = _clause_cut(text, start, max_chars, lowest=start + max(1, max_chars // 3))
        if cut is None:
            space = text.rfind(" ", start + 1, start + max_chars + 1)
            if space > start:
                cut = space
            else:  # no space (CJK): any clause mark beats cutting a word
                cut = _clause_cut(text, start, max_chars, lowest=start + 1) or start + max_chars
        _append_span(parts, text, start, cut)
        start = cut
        while start < end and text[start] == " ":
            start += 1
    _append_span(parts, text, start, end)
    return parts


def _clause_cut(text: str, start: int, max_chars: int, lowest: int) -> int | None:
    """The end of the last clause within the limit that ends at or after `lowest`.

    With a space to fall back on, `lowest` is a third of the limit in, so a clause mark near the start does not
    leave a stub of a piece.
    """
    for p in range(start + max_chars - 1, lowest - 1, -1):
        ch = text[p]
        if ch in _SCRIPT_CLAUSE:
            return p + 1
        before_space = p + 1 < len(text) and text[p + 1] == " "
        if ch in _LATIN_CLAUSE and before_space:
            return p + 1
        if ch == "-" and before_space and p > start and text[p - 1] == " ":  # a spaced hyphen used as a dash
            return p + 1
    return None


def _merge(fragments: list[tuple[int, int]], max_chars: int) -> list[tuple[int, int]]:
    """Join consecutive fragments while the joined slice stays within `max_chars`."""
    merged: list[tuple[int, int]] = []
    for start, end in fragments:
        if merged and end - merged[-1][0] <= max_chars:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
