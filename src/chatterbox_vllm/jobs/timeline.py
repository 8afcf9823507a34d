"""Where each finished piece sits in a job's audio (JOBS_API.md, Timeline): piece i follows PAUSE_SECONDS of silence
after piece i-1, or CHAPTER_PAUSE_SECONDS where a new section (chapter) starts. The export, the subtitles and the
progress events all read positions from here, so they agree to the sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio.mel import S3GEN_SAMPLE_RATE as SAMPLE_RATE
from .store import Piece
from .types import Chapter, Cue

PAUSE_SECONDS = 0.12  # synthesis.PAUSE_SECONDS: the pause between sentence pieces of a speech request
CHAPTER_PAUSE_SECONDS = 1.0
PAUSE_SAMPLES = int(PAUSE_SECONDS * SAMPLE_RATE)
CHAPTER_PAUSE_SAMPLES = int(CHAPTER_PAUSE_SECONDS * SAMPLE_RATE)


@dataclass(frozen=True)
class Span:
    """A piece's first sample and the sample after its last, on the job's timeline."""

    piece: Piece
    start: int
    end: int


def pause_before(previous: Piece | None, piece: Piece) -> int:
    if previous is None:
        return 0
    return CHAPTER_PAUSE_SAMPLES if piece.section != previous.section else PAUSE_SAMPLES


def spans(pieces: Sequence[Piece]) -> list[Span]:
    """The timeline of a contiguous run of finished pieces from the first (their `samples` known)."""
    out: list[Span] = []
    position = 0
    previous: Piece | None = None
    for piece in pieces:
        assert piece.samples is not None, "only finished pieces have a place on the timeline"
        position += pause_before(previous, piece)
        out.append(Span(piece, position, position + piece.samples))
        position += piece.samples
        previous = piece
    return out


def cues(pieces: Sequence[Piece]) -> list[Cue]:
    return [Cue(s.piece.index, s.start / SAMPLE_RATE, s.end / SAMPLE_RATE, s.piece.text) for s in spans(pieces)]


def total_samples(pieces: Sequence[Piece]) -> int:
    laid = spans(pieces)
    return laid[-1].end if laid else 0


def chapters(job_chapters: list[dict[str, Any]], pieces: Sequence[Piece]) -> list[Chapter]:
    """The job's chapters (titles and first pieces) on the timeline of `pieces`: those whose first piece is there,
    each ending where the next starts (the last at the end of the audio)."""
    laid = spans(pieces)
    starts = {s.piece.index: s.start for s in laid}
    total = laid[-1].end if laid else 0
    present = [(c["title"], starts[c["start_piece"]]) for c in job_chapters if c["start_piece"] in starts]
    if present:
        present[0] = (present[0][0], 0)  # the first chapter starts the audio (pieces before its heading included)
    return [
        Chapter(title, start / SAMPLE_RATE, (present[i + 1][1] if i + 1 < len(present) else total) / SAMPLE_RATE)
        for i, (title, start) in enumerate(present)
    ]


def audio_chunks(pieces: Sequence[Piece], read: Any) -> Iterator[np.ndarray]:
    """The job's audio as chunks (silences and pieces, in order): `read(piece)` gives a piece's waveform."""
    previous: Piece | None = None
    for piece in pieces:
        pause = pause_before(previous, piece)
        if pause:
            yield np.zeros(pause, dtype=np.float32)
        yield read(piece)
        previous = piece
