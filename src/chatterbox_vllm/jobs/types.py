"""The shapes the jobs modules share: a document's sections, a spoken piece's cue, a chapter of the output."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Section:
    """A part of the input with its heading (None before the first heading, or in text without headings)."""

    title: str | None
    text: str  # the prose to speak, headings removed (the title is spoken as the section's first piece)


@dataclass(frozen=True)
class Document:
    """An input read into sections: pasted text, a .txt or .md file, or an EPUB's chapters."""

    title: str | None
    sections: list[Section] = field(default_factory=list)

    @property
    def characters(self) -> int:
        return sum(len(s.text) + len(s.title or "") for s in self.sections)


@dataclass(frozen=True)
class Cue:
    """One spoken piece on the output's timeline (seconds from the start of the whole audio)."""

    index: int
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Chapter:
    """A chapter mark of the output (an m4b chapter, an ID3 CHAP frame): from `start` to `end` seconds."""

    title: str
    start: float
    end: float
