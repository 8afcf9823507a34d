"""A job's cues as WebVTT or SRT: one cue per spoken piece, timed from the audio actually produced.

Both formats are a few lines of text each, written directly (no dependency): both need the same millisecond
rounding, which must keep cue i's end at or before cue i+1's start, and WebVTT needs its own escaping. A piece's
text can be long; it stays one cue (the cue maps to one piece of audio), wrapped to lines of about 42 characters,
the usual subtitle line length.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from chatterbox_vllm.jobs.types import Cue

LINE_CHARS = 42


def _milliseconds(seconds: float) -> int:
    """Nearest millisecond, halves up, never negative. One monotonic rounding for every time: if a <= b then
    round(a) <= round(b), so cues that do not overlap in seconds do not overlap once written."""
    return max(0, int(seconds * 1000.0 + 0.5))


def _timestamp(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def _times(cue: Cue) -> tuple[int, int]:
    start = _milliseconds(cue.start)
    return start, max(start, _milliseconds(cue.end))


def _lines(text: str) -> list[str]:
    """The cue's text on lines of at most ~LINE_CHARS (a longer word stays whole); never a blank line, which
    would end the cue in both formats."""
    words = " ".join(text.split())
    return textwrap.wrap(words, LINE_CHARS, break_long_words=False, break_on_hyphens=False) or [""]


def _vtt_escape(line: str) -> str:
    # WebVTT cue text: "&" and "<" start entities and tags, and "-->" must not appear; escaping ">" covers it.
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_webvtt(cues: Sequence[Cue]) -> str:
    """A WebVTT file; each cue's identifier is its piece index, so players and pages can map cues to pieces."""
    blocks = ["WEBVTT\n"]
    for cue in cues:
        start, end = _times(cue)
        text = "\n".join(_vtt_escape(line) for line in _lines(cue.text))
        blocks.append(f"{cue.index}\n{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n")
    return "\n".join(blocks)


def to_srt(cues: Sequence[Cue]) -> str:
    """An SRT file, cues numbered from 1 in order as the format requires."""
    blocks = []
    for number, cue in enumerate(cues, start=1):
        start, end = _times(cue)
        # SRT has no escaping; an arrow in the text could be taken for a timing line by lenient parsers.
        text = "\n".join(line.replace("-->", "->") for line in _lines(cue.text))
        blocks.append(f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n")
    return "\n".join(blocks)
