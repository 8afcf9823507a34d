"""The jobs' SQLite store and piece files (no model): a job's rows, its pieces written atomically and read back
bit-stable, counters, requeueing after a stop, deletion; and the timeline the export and subtitles share."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from chatterbox_vllm.jobs import timeline
from chatterbox_vllm.jobs.store import JobStore, PieceSpec


def make_job(store: JobStore, job_id: str = "job_a", pieces: int = 3) -> None:
    specs = [PieceSpec("Chapter one", 0, 0)] + [PieceSpec(f"Sentence {i}.", 0, 0) for i in range(1, pieces - 1)]
    specs.append(PieceSpec("Chapter two", 1, 1))
    store.create(job_id, request={"model": "tts-1", "voice": "alloy", "response_format": "wav"}, seed=7,
                 title="Book", chapters=[{"title": "Chapter one", "start_piece": 0},
                                         {"title": "Chapter two", "start_piece": pieces - 1}],
                 characters=40, pieces=specs, estimated_bytes=1000)  # fmt: skip


def noise(samples: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(samples) * 0.2).astype(np.float32)


def test_a_job_and_its_pieces_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    make_job(store, pieces=4)
    assert store.count() == 1 and [r.id for r in store.unfinished()] == ["job_a"]
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    wavs = [noise(1000 + 10 * i, i) for i in range(4)]
    store.save_piece("job_a", 0, wavs[0])
    store.save_piece("job_a", 2, wavs[2])  # out of order: the prefix stops at the gap
    store.save_piece("job_a", 2, wavs[2])  # a piece stored twice is counted once
    row = store.get("job_a")
    assert row is not None and (row.pieces_done, row.audio_samples, row.seed) == (2, 2020, 7)
    assert [p.index for p in store.done_prefix("job_a")] == [0]
    for i in (1, 3):
        store.save_piece("job_a", i, wavs[i])
    for i, wav in enumerate(wavs):  # 24-bit FLAC: within one quantisation step, and the same on every read
        back = store.read_piece("job_a", i)
        assert back.dtype == np.float32 and back.shape == wav.shape
        assert np.max(np.abs(back - wav)) <= 2.0**-23 * 1.01
        assert np.array_equal(back, store.read_piece("job_a", i))
    assert not list(store.job_dir("job_a").glob(".*"))  # no temporary file left
    assert store.reserved_bytes() >= store.used_bytes("job_a") > 0
    # the timeline: 0.12 s between pieces of a section, 1 s before a new chapter's first piece
    pieces = store.done_prefix("job_a")
    spans = timeline.spans(pieces)
    assert [s.start for s in spans] == [0, 1000 + 2880, 1000 + 1010 + 2 * 2880, 1000 + 1010 + 1020 + 2 * 2880 + 24000]
    assert timeline.total_samples(pieces) == spans[-1].end == spans[-1].start + 1030
    chapters = timeline.chapters(store.get("job_a").chapters, pieces)  # type: ignore[union-attr]
    assert [(c.title, c.start * 24000, c.end * 24000) for c in chapters] == [
        ("Chapter one", 0, spans[3].start), ("Chapter two", spans[3].start, spans[3].end)]  # fmt: skip
    audio = np.concatenate(list(timeline.audio_chunks(pieces, lambda p: store.read_piece("job_a", p.index))))
    assert len(audio) == spans[-1].end and np.array_equal(
        audio[spans[1].start : spans[1].end], store.read_piece("job_a", 1)
    )


def test_running_jobs_are_queued_again_and_a_deleted_job_leaves_nothing(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    make_job(store, "job_a")
    make_job(store, "job_b")
    store.set_state("job_a", "running")
    store.set_state("job_b", "failed", error={"message": "m", "type": "server_error", "param": None, "code": "c"})
    store.save_piece("job_a", 0, noise(500, 0))
    store.close()
    reopened = JobStore(tmp_path)  # a restart: the same file, the same state
    assert reopened.requeue_running() == 1
    assert [(r.id, r.state) for r in reopened.unfinished()] == [("job_a", "queued")]
    failed = reopened.get("job_b")
    assert failed is not None and failed.error is not None and failed.error["code"] == "c" and failed.finished_at
    assert [r.id for r in reopened.list_jobs()] == ["job_b", "job_a"]  # newest first
    assert reopened.delete("job_a") and not reopened.delete("job_a")
    assert reopened.get("job_a") is None and reopened.pieces("job_a") == []
    assert not reopened.job_dir("job_a").exists()


def test_a_piece_that_cannot_be_written_is_not_marked(tmp_path: Path) -> None:
    """An OSError while writing (here: the job's directory is a file) leaves the piece unfinished, no stray file."""
    store = JobStore(tmp_path)
    make_job(store)
    store.job_dir("job_a").write_bytes(b"")
    with pytest.raises(OSError):
        store.save_piece("job_a", 0, noise(100, 0))
    row = store.get("job_a")
    assert row is not None and row.pieces_done == 0 and not store.pieces("job_a")[0].done
