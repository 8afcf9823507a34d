"""A job's pieces into one audio file, streamed to disk, with its title and chapter marks.

The caller yields the float32 24 kHz chunks in order, pauses included, so a ten-hour book is never one array.
mp3 | opus | aac | flac | wav | pcm go through the server's `AudioEncoder` writing straight to the file (FFmpeg's
own file I/O, so MP3's Xing/LAME tag and FLAC's STREAMINFO are exact). m4b is AAC in an MP4 container, written
with PyAV, whose muxer stores the chapters (a QuickTime chapter track plus Nero `chpl`, read by Apple Books and
most audiobook players) and the title. Tags are added afterwards with mutagen: mp3 gets ID3v2 `TIT2` and, when
there are chapters, `CTOC` + `CHAP` frames (the ID3 chapter addendum, read by podcast and audiobook players);
FLAC and Ogg Opus get a `TITLE` and the de facto `CHAPTERnnn` / `CHAPTERnnnNAME` Vorbis comments. ADTS AAC,
WAV and raw PCM have no place for either.

The file is written under a temporary name of its own beside `path` (`.<name>.<random>.partial`) and renamed over
it when complete, so a reader never sees half a file; on failure the partial file is removed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import mutagen.flac
import mutagen.id3
import mutagen.oggopus
import numpy as np

from chatterbox_vllm.jobs.types import Chapter
from chatterbox_vllm.server.audio import AUDIO_FORMATS, AudioEncoder, _as_mono_float, _float_frame

SAMPLE_RATE = 24000
EXPORT_FORMATS: tuple[str, ...] = (*AUDIO_FORMATS, "m4b")
M4B_BIT_RATE = 64_000
_ID3_NO_OFFSET = 0xFFFFFFFF  # CHAP byte offsets "not used": players seek by time


def write_audio(
    pieces: Iterable[np.ndarray],
    path: Path,
    fmt: str,
    *,
    chapters: list[Chapter],
    title: str | None,
) -> None:
    """Encode `pieces` (float32 mono at 24 kHz, in order) into `path` as `fmt`, with `title` and `chapters`."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    # A name of its own per call: two exports of one job (say two downloads of a running job) never share one.
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    partial = Path(name)
    try:
        if fmt == "m4b":
            _write_m4b(pieces, partial, chapters=chapters, title=title)
        else:
            _write_encoded(pieces, partial, fmt)
            _tag(partial, fmt, chapters=chapters, title=title)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _write_encoded(pieces: Iterable[np.ndarray], path: Path, fmt: str) -> None:
    encoder = AudioEncoder(fmt, SAMPLE_RATE, path=path)
    try:
        for piece in pieces:
            encoder.encode(piece)
        encoder.finish()
    except BaseException:
        encoder.close()
        raise


def _write_m4b(pieces: Iterable[np.ndarray], path: Path, *, chapters: list[Chapter], title: str | None) -> None:
    # "ipod" is FFmpeg's MP4 muxer for iTunes-style files; the M4B brand marks an audiobook (bookmarkable).
    container = av.open(str(path), mode="w", format="ipod", options={"brand": "M4B "})
    try:
        if title:
            container.metadata["title"] = title
            container.metadata["album"] = title
        stream: av.AudioStream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")  # type: ignore[assignment]
        stream.bit_rate = M4B_BIT_RATE
        if chapters:
            container.set_chapters(
                [
                    {
                        "id": number,
                        "start": _samples(chapter.start),
                        "end": max(_samples(chapter.end), _samples(chapter.start)),
                        "time_base": Fraction(1, SAMPLE_RATE),
                        "metadata": {"title": chapter.title},
                    }
                    for number, chapter in enumerate(chapters, start=1)
                ]
            )
        container.start_encoding()  # the header now, so even an export of no pieces is a valid (empty) file
        pts = 0
        for piece in pieces:
            x = _as_mono_float(piece)
            if x.size:
                for packet in stream.encode(_float_frame(x, SAMPLE_RATE, pts)):
                    container.mux(packet)
                pts += x.size
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()


def _samples(seconds: float) -> int:
    return max(0, round(seconds * SAMPLE_RATE))


def _milliseconds(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _tag(path: Path, fmt: str, *, chapters: list[Chapter], title: str | None) -> None:
    if fmt == "mp3":
        _tag_mp3(path, chapters, title)
    elif fmt in ("flac", "opus") and (title or chapters):
        tagged = mutagen.flac.FLAC(path) if fmt == "flac" else mutagen.oggopus.OggOpus(path)
        if tagged.tags is None:
            tagged.add_tags()
        assert tagged.tags is not None
        if title:
            tagged.tags["TITLE"] = [title]
        for number, chapter in enumerate(chapters, start=1):
            tagged.tags[f"CHAPTER{number:03d}"] = [_vorbis_time(chapter.start)]
            tagged.tags[f"CHAPTER{number:03d}NAME"] = [chapter.title]
        tagged.save()


def _vorbis_time(seconds: float) -> str:
    ms = _milliseconds(seconds)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _tag_mp3(path: Path, chapters: list[Chapter], title: str | None) -> None:
    if not title and not chapters:
        return
    try:
        tags = mutagen.id3.ID3(path)
    except mutagen.id3.ID3NoHeaderError:
        tags = mutagen.id3.ID3()
    if title:
        tags.add(mutagen.id3.TIT2(encoding=3, text=[title]))
    if chapters:
        ids = [f"chp{number}" for number in range(len(chapters))]
        tags.add(
            mutagen.id3.CTOC(
                element_id="toc",
                flags=mutagen.id3.CTOCFlags.TOP_LEVEL | mutagen.id3.CTOCFlags.ORDERED,
                child_element_ids=ids,
                sub_frames=[mutagen.id3.TIT2(encoding=3, text=["Chapters"])],
            )
        )
        for element_id, chapter in zip(ids, chapters, strict=True):
            start = _milliseconds(chapter.start)
            tags.add(
                mutagen.id3.CHAP(
                    element_id=element_id,
                    start_time=start,
                    end_time=max(start, _milliseconds(chapter.end)),
                    start_offset=_ID3_NO_OFFSET,
                    end_offset=_ID3_NO_OFFSET,
                    sub_frames=[mutagen.id3.TIT2(encoding=3, text=[chapter.title])],
                )
            )
    tags.save(path)
