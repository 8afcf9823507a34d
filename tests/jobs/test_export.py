"""A job's pieces into one file, with real encoders, decoded back with PyAV (FFmpeg) and soundfile, tags read
back with mutagen: every sample is there (within a codec frame), chapters and the title are where they belong,
and the file is written to disk while the pieces are still coming."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import mutagen
import mutagen.id3
import numpy as np
import pytest
import soundfile as sf

from chatterbox_vllm.jobs.export import EXPORT_FORMATS, write_audio
from chatterbox_vllm.jobs.types import Chapter

SR = 24000
PAUSE = np.zeros(round(0.12 * SR), np.float32)
CHAPTER_PAUSE = np.zeros(SR, np.float32)
AAC_FRAME = 1024


def piece(seconds: float, hz: float, seed: int) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.4 * np.sin(2 * np.pi * hz * t) + 0.05 * noise).astype(np.float32)


def book() -> tuple[list[np.ndarray], list[Chapter]]:
    """Two chapters of pieces laid out as the jobs timeline does: 0.12 s pauses, 1 s before a new chapter."""
    chunks = [
        piece(0.8, 220, 0),
        PAUSE,
        piece(0.5, 330, 1),
        CHAPTER_PAUSE,
        piece(0.7, 440, 2),
        PAUSE,
        piece(0.3, 550, 3),
    ]
    second_start = sum(c.size for c in chunks[:4]) / SR
    total = sum(c.size for c in chunks) / SR
    chapters = [Chapter("Chapter One", 0.0, second_start), Chapter("Chapter Two: Ça va", second_start, total)]
    return chunks, chapters


def decoded(path: Path) -> tuple[int, int]:
    """(samples, sample rate) as FFmpeg decodes the file."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples, stream.codec_context.sample_rate


def chapters_read(path: Path) -> list[tuple[str, float, float]]:
    with av.open(str(path)) as container:
        return [
            (c["metadata"].get("title", ""), float(c["start"] * c["time_base"]), float(c["end"] * c["time_base"]))
            for c in container.chapters()
        ]


@pytest.mark.parametrize("fmt", [f for f in EXPORT_FORMATS if f != "pcm"])
def test_every_sample_is_exported(fmt: str, tmp_path: Path) -> None:
    chunks, chapters = book()
    total = sum(c.size for c in chunks)
    path = tmp_path / f"book.{fmt}"
    write_audio(iter(chunks), path, fmt, chapters=chapters, title="A Book")
    samples, rate = decoded(path)
    expected = total * rate // SR
    if fmt in ("wav", "flac"):
        assert (samples, rate) == (total, SR)
        with sf.SoundFile(path) as f:
            assert (f.frames, f.samplerate, f.channels) == (total, SR, 1)
    elif fmt == "aac":  # ADTS cannot say how much priming and padding to trim
        assert 0 <= samples - expected <= 2 * AAC_FRAME
    else:  # mp3's LAME tag, Ogg Opus pre-skip and MP4 edit lists trim to within a codec frame
        assert abs(samples - expected) <= AAC_FRAME * rate // SR, (samples, expected)
    assert not list(tmp_path.glob(".*.partial"))


def test_pcm_is_the_raw_samples(tmp_path: Path) -> None:
    chunks, chapters = book()
    path = tmp_path / "book.pcm"
    write_audio(iter(chunks), path, "pcm", chapters=chapters, title="A Book")
    expected = np.clip(np.rint(np.concatenate(chunks) * 32768.0), -32768, 32767).astype("<i2")
    np.testing.assert_array_equal(np.fromfile(path, "<i2"), expected)


def test_m4b_carries_chapters_title_and_the_audiobook_brand(tmp_path: Path) -> None:
    chunks, chapters = book()
    path = tmp_path / "book.m4b"
    write_audio(iter(chunks), path, "m4b", chapters=chapters, title="A Book")
    read = chapters_read(path)
    assert [title for title, _, _ in read] == [c.title for c in chapters]
    for (_, start, end), chapter in zip(read, chapters, strict=True):
        assert abs(start - chapter.start) <= 0.001 and abs(end - chapter.end) <= 0.001
    with av.open(str(path)) as container:
        assert container.metadata["title"] == "A Book"
        assert container.metadata["major_brand"].strip() == "M4B"
        assert container.streams.audio[0].codec_context.name == "aac"
    tags = mutagen.File(path)
    assert tags is not None and tags.tags["\xa9nam"] == ["A Book"]


def test_mp3_has_id3_chapter_frames(tmp_path: Path) -> None:
    chunks, chapters = book()
    path = tmp_path / "book.mp3"
    write_audio(iter(chunks), path, "mp3", chapters=chapters, title="A Book")
    tags = mutagen.id3.ID3(path)
    assert tags["TIT2"].text == ["A Book"]
    toc = tags.getall("CTOC")
    assert len(toc) == 1 and toc[0].flags & mutagen.id3.CTOCFlags.TOP_LEVEL
    frames = {frame.element_id: frame for frame in tags.getall("CHAP")}
    assert toc[0].child_element_ids == sorted(frames, key=lambda k: frames[k].start_time)
    marks = [
        (frames[i].sub_frames["TIT2"].text[0], frames[i].start_time, frames[i].end_time)
        for i in toc[0].child_element_ids
    ]
    assert marks == [(c.title, round(c.start * 1000), round(c.end * 1000)) for c in chapters]
    # FFmpeg reads the same marks, and the audio after the tag still decodes whole.
    assert [title for title, _, _ in chapters_read(path)] == [c.title for c in chapters]
    assert abs(decoded(path)[0] - sum(c.size for c in chunks)) <= AAC_FRAME


@pytest.mark.parametrize("fmt", ["flac", "opus"])
def test_flac_and_opus_have_vorbis_chapter_comments(fmt: str, tmp_path: Path) -> None:
    chunks, chapters = book()
    path = tmp_path / f"book.{fmt}"
    write_audio(iter(chunks), path, fmt, chapters=chapters, title="A Book")
    tags = mutagen.File(path).tags
    assert tags["TITLE"] == ["A Book"]
    assert tags["CHAPTER001"] == ["00:00:00.000"] and tags["CHAPTER001NAME"] == ["Chapter One"]
    assert tags["CHAPTER002"] == [f"00:00:0{chapters[1].start:.3f}"] and tags["CHAPTER002NAME"] == [chapters[1].title]
    read = chapters_read(path)
    assert [(t, round(s, 3)) for t, s, _ in read] == [(c.title, round(c.start, 3)) for c in chapters]


@pytest.mark.parametrize("fmt", ["mp3", "m4b", "flac", "opus"])
def test_no_chapters_means_no_chapter_marks(fmt: str, tmp_path: Path) -> None:
    chunks, _ = book()
    path = tmp_path / f"book.{fmt}"
    write_audio(iter(chunks), path, fmt, chapters=[], title=None)
    assert chapters_read(path) == []
    tags = mutagen.File(path).tags
    keys = [] if tags is None else list(tags.keys())
    assert not [k for k in keys if "CHAP" in k.upper() or "CTOC" in k.upper()]


BUFFER_BYTES = 512 * 1024  # FFmpeg's file I/O flushes every 256 KiB; Python's buffered writer every 8 KiB


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_written_while_the_pieces_come(fmt: str, tmp_path: Path) -> None:
    """The file grows on disk while the generator is still yielding, at most a buffer behind: nothing waits for
    the whole book, and memory does not grow with its length."""
    path = tmp_path / f"book.{fmt}"
    sizes: list[int] = []
    two_seconds = piece(2.0, 220, 0)

    def pieces() -> Iterator[np.ndarray]:
        for _ in range(45 if fmt == "opus" else 20):  # past the I/O buffer: 90 s of 32 kbit/s Opus, 40 s else
            partial = list(tmp_path.glob(f".book.{fmt}.*.partial"))
            assert len(partial) == 1 and not path.exists()
            sizes.append(partial[0].stat().st_size)
            yield two_seconds

    write_audio(pieces(), path, fmt, chapters=[], title=None)
    final = path.stat().st_size
    assert sizes[-1] > 0 and sizes[-1] >= final - BUFFER_BYTES, (sizes[-1], final)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failure_leaves_no_file_and_keeps_an_older_one(tmp_path: Path) -> None:
    path = tmp_path / "book.mp3"
    path.write_bytes(b"older export")

    def pieces() -> Iterator[np.ndarray]:
        yield piece(1.0, 220, 0)
        raise RuntimeError("synthesis failed")

    with pytest.raises(RuntimeError, match="synthesis failed"):
        write_audio(pieces(), path, "mp3", chapters=[], title=None)
    assert path.read_bytes() == b"older export"
    assert [p.name for p in tmp_path.iterdir()] == ["book.mp3"]


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported audio format"):
        write_audio(iter([]), tmp_path / "x.ogg", "ogg", chapters=[], title=None)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_empty_input_gives_a_file(fmt: str, tmp_path: Path) -> None:
    """No pieces yet (a job's audio asked for before its first piece) still gives a file; where the format has a
    header to carry, it decodes to no samples."""
    path = tmp_path / f"empty.{fmt}"
    write_audio(iter([]), path, fmt, chapters=[], title=None)
    assert path.exists()
    if fmt in ("wav", "flac"):
        assert decoded(path)[0] == 0
    elif fmt == "m4b":  # MP4 leaves out a track without samples: a valid file with nothing to play
        with av.open(str(path)) as container:
            assert not container.streams.audio
