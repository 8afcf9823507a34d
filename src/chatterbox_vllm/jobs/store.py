"""The jobs' state on disk: one SQLite database (`<data dir>/jobs.sqlite3`, WAL) and each finished piece's audio in
`<data dir>/jobs/<id>/<index>.flac`.

A piece's file is written whole to a temporary name and renamed into place (`os.replace`), and only then is its row
marked done: a server killed at any moment leaves either a finished piece (file and row) or none (a stray temporary
file, removed when the piece is made again), never a row pointing at half a file.

Pieces are FLAC, PCM_24 (soundfile/libsndfile): half the size of float32 WAV and lossless for what is stored. The
waveform is quantised to 24 bits once, on write; reading back gives exactly int24 / 2**23 as float32 every time, so a
resumed job's export is bit-equal to an uninterrupted one's (both read the same stored samples). 24-bit quantisation
(-144 dB) is far below anything the lossy output formats keep.

Every method is synchronous and short (one statement or one file); callers on the event loop run the file work in
a thread. One connection is shared under a lock (sqlite3's `check_same_thread=False`).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..audio.mel import S3GEN_SAMPLE_RATE as SAMPLE_RATE

DB_NAME = "jobs.sqlite3"
PIECES_DIR = "jobs"
FLAC_SUBTYPE = "PCM_24"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    seed INTEGER NOT NULL,
    title TEXT,
    chapters TEXT NOT NULL,
    characters INTEGER NOT NULL,
    pieces_total INTEGER NOT NULL,
    pieces_done INTEGER NOT NULL DEFAULT 0,
    audio_samples INTEGER NOT NULL DEFAULT 0,
    estimated_bytes INTEGER NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS pieces (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    section INTEGER NOT NULL,
    chapter INTEGER,
    done INTEGER NOT NULL DEFAULT 0,
    samples INTEGER,
    PRIMARY KEY (job_id, idx)
);
"""

UNFINISHED = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class PieceSpec:
    """A piece as made at submit: its text, the section it belongs to, and its chapter (index into the job's
    chapters; None before the first heading)."""

    text: str
    section: int
    chapter: int | None


@dataclass(frozen=True)
class Piece:
    index: int
    text: str
    section: int
    chapter: int | None
    done: bool
    samples: int | None


@dataclass(frozen=True)
class JobRow:
    id: str
    created_at: int
    finished_at: int | None
    state: str
    request: dict[str, Any]
    seed: int
    title: str | None
    chapters: list[dict[str, Any]]  # [{"title", "start_piece"}]
    characters: int
    pieces_total: int
    pieces_done: int
    audio_samples: int
    estimated_bytes: int
    error: dict[str, Any] | None


class JobStore:
    """The database and the piece files of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.pieces_root = self.data_dir / PIECES_DIR
        self.pieces_root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / DB_NAME, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------------------------------- jobs
    def create(
        self,
        job_id: str,
        *,
        request: dict[str, Any],
        seed: int,
        title: str | None,
        chapters: list[dict[str, Any]],
        characters: int,
        pieces: list[PieceSpec],
        estimated_bytes: int,
    ) -> JobRow:
        """A new queued job with its pieces, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO jobs (id, created_at, state, request, seed, title, chapters, characters, "
                    "pieces_total, estimated_bytes) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        int(time.time()),
                        json.dumps(request),
                        seed,
                        title,
                        json.dumps(chapters),
                        characters,
                        len(pieces),
                        estimated_bytes,
                    ),
                )
                self._db.executemany(
                    "INSERT INTO pieces (job_id, idx, text, section, chapter) VALUES (?, ?, ?, ?, ?)",
                    [(job_id, i, p.text, p.section, p.chapter) for i, p in enumerate(pieces)],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        row = self.get(job_id)
        assert row is not None
        return row

    def get(self, job_id: str) -> JobRow | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self) -> list[JobRow]:
        """Every job, newest first."""
        return [_job(r) for r in self._query("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC")]

    def unfinished(self) -> list[JobRow]:
        """Queued and running jobs, oldest first (the order they run in)."""
        rows = self._query("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, rowid")
        return [_job(r) for r in rows]

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM jobs")[0][0])

    def reserved_bytes(self) -> int:
        """Disk the stored jobs hold or will hold: each job's estimate, or what its pieces take if more."""
        total = 0
        for row in self._query("SELECT id, estimated_bytes FROM jobs"):
            total += max(int(row["estimated_bytes"]), self.used_bytes(row["id"]))
        return total

    def used_bytes(self, job_id: str) -> int:
        directory = self.job_dir(job_id)
        if not directory.is_dir():
            return 0
        return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())

    def set_state(self, job_id: str, state: str, *, error: dict[str, Any] | None = None) -> None:
        finished = int(time.time()) if state in FINISHED else None
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                (state, finished, json.dumps(error) if error is not None else None, job_id),
            )

    def requeue_running(self) -> int:
        """Jobs left `running` by a server that stopped (or was killed): queued again. Returns how many."""
        with self._lock:
            return self._db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'").rowcount

    def delete(self, job_id: str) -> bool:
        """The job's row, its pieces' rows and its files; False if there was no such job."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return deleted

    # ----------------------------------------------------------------------------------------- pieces
    def pieces(self, job_id: str) -> list[Piece]:
        rows = self._query("SELECT * FROM pieces WHERE job_id = ? ORDER BY idx", (job_id,))
        return [Piece(r["idx"], r["text"], r["section"], r["chapter"], bool(r["done"]), r["samples"]) for r in rows]

    def job_dir(self, job_id: str) -> Path:
        return self.pieces_root / job_id

    def piece_path(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / f"{index}.flac"

    def save_piece(self, job_id: str, index: int, wav: np.ndarray) -> None:
        """Write a finished piece (float32, 24 kHz) atomically, then mark it done and count it. Raises OSError when
        the file cannot be written (a full disk): nothing is marked then."""
        path = self.piece_path(job_id, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{index}.flac.tmp")
        try:
            sf.write(tmp, np.asarray(wav, dtype=np.float32), SAMPLE_RATE, format="FLAC", subtype=FLAC_SUBTYPE)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        samples = len(wav)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                changed = self._db.execute(
                    "UPDATE pieces SET done = 1, samples = ? WHERE job_id = ? AND idx = ? AND done = 0",
                    (samples, job_id, index),
                ).rowcount
                if changed:
                    self._db.execute(
                        "UPDATE jobs SET pieces_done = pieces_done + 1, audio_samples = audio_samples + ? WHERE id = ?",
                        (samples, job_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def read_piece(self, job_id: str, index: int) -> np.ndarray:
        wav, rate = sf.read(self.piece_path(job_id, index), dtype="float32", always_2d=False)
        assert rate == SAMPLE_RATE
        return wav

    def done_prefix(self, job_id: str) -> list[Piece]:
        """The finished pieces before the first unfinished one (what a running job's audio holds)."""
        prefix = []
        for piece in self.pieces(job_id):
            if not piece.done:
                break
            prefix.append(piece)
        return prefix

    def iter_audio(self, job_id: str, pieces: list[Piece]) -> Iterator[np.ndarray]:
        for piece in pieces:
            yield self.read_piece(job_id, piece.index)


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(
        id=row["id"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        state=row["state"],
        request=json.loads(row["request"]),
        seed=row["seed"],
        title=row["title"],
        chapters=json.loads(row["chapters"]),
        characters=row["characters"],
        pieces_total=row["pieces_total"],
        pieces_done=row["pieces_done"],
        audio_samples=row["audio_samples"],
        estimated_bytes=row["estimated_bytes"],
        error=json.loads(row["error"]) if row["error"] else None,
    )
