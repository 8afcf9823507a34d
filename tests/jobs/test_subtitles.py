"""WebVTT and SRT from a job's cues, read back by FFmpeg's own subtitle demuxers (through PyAV): one cue per piece,
times to the millisecond on the audio's timeline, never overlapping, text escaped and wrapped."""

from __future__ import annotations

import html
import io
import re

import av
import numpy as np
import pytest

from chatterbox_vllm.jobs.subtitles import LINE_CHARS, to_srt, to_webvtt
from chatterbox_vllm.jobs.types import Cue

SR = 24000
PAUSE = round(0.12 * SR)
CHAPTER_PAUSE = SR

LONG = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, and what is the use of a book, thought Alice, without pictures or conversations?"
)


def timeline_cues(lengths: list[int], chapter_starts: set[int] = frozenset()) -> list[Cue]:  # type: ignore[assignment]
    """Cues as the jobs timeline places them: exact sample offsets / 24000, pauses between pieces."""
    cues, at = [], 0
    for index, length in enumerate(lengths):
        if index:
            at += CHAPTER_PAUSE if index in chapter_starts else PAUSE
        cues.append(Cue(index=index, start=at / SR, end=(at + length) / SR, text=f"Piece {index} says something."))
        at += length
    return cues


def read_back(text: str, fmt: str) -> list[tuple[int, int, str]]:
    """(start ms, end ms, text) of each cue as FFmpeg's demuxer for `fmt` parses it."""
    cues = []
    with av.open(io.BytesIO(text.encode()), format=fmt) as container:
        stream = container.streams.subtitles[0]
        assert stream.time_base == 1 / 1000 or float(stream.time_base) == 0.001
        for packet in container.demux(stream):
            if packet.size:
                cues.append((int(packet.pts), int(packet.pts + packet.duration), bytes(packet).decode()))
    return cues


@pytest.mark.parametrize(("writer", "fmt"), [(to_webvtt, "webvtt"), (to_srt, "srt")])
def test_one_cue_per_piece_timed_from_the_samples(writer, fmt: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    cues = timeline_cues([int(n) for n in rng.integers(2_000, 200_000, 300)], chapter_starts={50, 120})
    parsed = read_back(writer(cues), fmt)
    assert len(parsed) == len(cues)
    for cue, (start, end, _) in zip(cues, parsed, strict=True):
        assert abs(start - cue.start * 1000) <= 0.5 and abs(end - cue.end * 1000) <= 0.5
    for (_, end, _), (start, _, _) in zip(parsed, parsed[1:], strict=False):
        assert end <= start


@pytest.mark.parametrize("writer", [to_webvtt, to_srt])
def test_touching_cues_never_overlap_after_rounding(writer) -> None:  # type: ignore[no-untyped-def]
    # Boundaries exactly on and around half a millisecond, where independent rounding could cross.
    bounds = [0.0, 0.0005, 0.0015, 1.0004999, 1.0005, 2.4995, 2.49950001, 3599.9995, 36000.0005]
    cues = [Cue(i, a, b, f"c{i}") for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]
    separator = "." if writer is to_webvtt else ","
    times = re.findall(
        rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d) --> (\d\d):(\d\d):(\d\d)[.,](\d\d\d)", writer(cues)
    )
    assert len(times) == len(cues)
    ms = [
        (
            ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(f),
            ((int(h2) * 60 + int(m2)) * 60 + int(s2)) * 1000 + int(f2),
        )
        for h, m, s, f, h2, m2, s2, f2 in times
    ]
    for (start, end), (next_start, _) in zip(ms, ms[1:], strict=False):
        assert start <= end <= next_start
    assert ms[-1] == (3_600_000, 36_000_001)  # hours past 9 keep their digits: 10:00:00.001


def test_webvtt_layout_escaping_and_wrapping() -> None:
    cues = [
        Cue(0, 0.0, 4.5, LONG),
        Cue(1, 4.62, 5.0, "Tom & Jerry <b>bold</b> --> arrow"),
        Cue(2, 5.12, 6.0, "x" * 60 + " tail"),
    ]
    text = to_webvtt(cues)
    assert text.startswith("WEBVTT\n\n0\n00:00:00.000 --> 00:00:04.500\n")
    assert text.endswith("\n") and "\n\n\n" not in text
    blocks = text.strip("\n").split("\n\n")[1:]
    assert [b.split("\n")[0] for b in blocks] == ["0", "1", "2"]  # identifiers are the piece indexes
    first_lines = blocks[0].split("\n")[2:]
    assert len(first_lines) > 1 and all(len(line) <= LINE_CHARS for line in first_lines)
    assert " ".join(first_lines) == LONG
    assert blocks[1].split("\n")[2] == "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt; --&gt; arrow"
    assert blocks[2].split("\n")[2:] == ["x" * 60, "tail"]  # a word longer than a line is not cut
    spoken = [html.unescape(t) for _, _, t in read_back(text, "webvtt")]
    assert spoken[1] == "Tom & Jerry <b>bold</b> --> arrow"
    assert spoken[0].replace("\n", " ") == LONG


def test_srt_layout_numbers_from_one() -> None:
    cues = [Cue(7, 0.0, 1.25, "First piece."), Cue(8, 1.37, 3723.5, "Second  piece\nwith\n\nblank lines --> x")]
    text = to_srt(cues)
    assert text == (
        "1\n00:00:00,000 --> 00:00:01,250\nFirst piece.\n\n"
        "2\n00:00:01,370 --> 01:02:03,500\nSecond piece with blank lines -> x\n"
    )
    assert [t for _, _, t in read_back(text, "srt")] == ["First piece.", "Second piece with blank lines -> x"]


def test_no_cues_give_valid_empty_files() -> None:
    assert to_webvtt([]) == "WEBVTT\n"
    assert to_srt([]) == ""
    assert read_back(to_webvtt([]), "webvtt") == []
