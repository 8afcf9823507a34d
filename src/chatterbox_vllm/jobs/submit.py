"""Accepting a long-form job: its limits, its pieces and its stored row, all before the 202.

Everything that can be refused is checked here, in the order of what it costs: the number of stored jobs, the model
and voice, the input's length, its pieces (each section's title is its first piece, then its text cut by
`split_for_synthesis`), the disk the audio will take, and the request's speech settings and text (the synthesizer's
`prepare_job`, as a speech request is checked). The pieces are stored with the job, so a resumed job speaks exactly
the pieces it was accepted with.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Callable

from ..audio.mel import S3GEN_SAMPLE_RATE as SAMPLE_RATE
from ..server.errors import APIError
from ..server.registry import ModelRegistry
from ..server.schemas import JobRequest
from ..server.speech_job import resolve_voice
from ..settings import Settings
from ..text.chunking import split_for_synthesis
from .runner import JobRunner, speech_request
from .store import JobRow, JobStore, PieceSpec
from .types import Document

# Speech runs at ~14 characters a second (0.07 s each); 0.08 leaves room for slow voices and pauses. A stored piece
# is 24-bit FLAC, which rarely compresses speech below ~0.7 of its 3 bytes a sample: the estimate takes all 3.
SECONDS_PER_CHARACTER = 0.08
BYTES_PER_SECOND = SAMPLE_RATE * 3
FREE_SPACE_RESERVE_BYTES = 2**30


def estimated_bytes(characters: int) -> int:
    return int(characters * SECONDS_PER_CHARACTER * BYTES_PER_SECOND)


def new_job_id() -> str:
    return f"job_{secrets.token_hex(16)}"


def pieces_of(
    document: Document, chunk_chars: int, clean: Callable[[str], str]
) -> tuple[list[PieceSpec], list[dict[str, object]]]:
    """The document's pieces and its chapters (titled sections, each with its first piece)."""
    pieces: list[PieceSpec] = []
    chapters: list[dict[str, object]] = []
    for section_index, section in enumerate(document.sections):
        title = " ".join(clean(section.title or "").split())
        texts = ([title] if title else []) + split_for_synthesis(clean(section.text), chunk_chars)
        if not texts:
            continue
        chapter = None
        if title:
            chapter = len(chapters)
            chapters.append({"title": title, "start_piece": len(pieces)})
        pieces.extend(PieceSpec(text, section_index, chapter) for text in texts)
    return pieces, chapters


async def submit(
    body: JobRequest,
    document: Document,
    *,
    models: ModelRegistry,
    store: JobStore,
    runner: JobRunner,
    settings: Settings,
) -> JobRow:
    """Check the job against every limit, store it queued with its pieces, and wake the runner."""
    if await asyncio.to_thread(store.count) >= settings.job_max_jobs:
        raise APIError(
            429,
            f"the server keeps at most {settings.job_max_jobs} jobs (CHATTERBOX_JOB_MAX_JOBS); delete finished "
            "ones first (DELETE /v1/audio/speech/jobs/{id})",
            code="job_limit_reached",
        )
    model = models.for_request(body.model).require_ready()
    request = speech_request(body.model_dump(mode="json"))
    voice = resolve_voice(request, model, models)
    characters = document.characters
    if characters > settings.job_max_input_chars:
        raise APIError(
            400,
            f"input is {characters} characters; the limit for a job is {settings.job_max_input_chars} "
            "(CHATTERBOX_JOB_MAX_INPUT_CHARS)",
            param="input",
            code="string_above_max_length",
        )
    synthesizer = model.synthesizer
    pieces, chapters = pieces_of(document, settings.chunk_chars, synthesizer.job_text)
    if not pieces:
        raise APIError(400, "input has no text to speak", param="input", code="empty_input")
    await _check_disk(store, settings, characters)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    await synthesizer.prepare_job(request, voice, [p.text for p in pieces], seed)
    row = await asyncio.to_thread(
        store.create,
        new_job_id(),
        request=body.model_dump(mode="json", exclude={"input"}),
        seed=seed,
        title=body.title or document.title,
        chapters=chapters,
        characters=characters,
        pieces=pieces,
        estimated_bytes=estimated_bytes(characters),
    )
    runner.wake()
    return row


async def _check_disk(store: JobStore, settings: Settings, characters: int) -> None:
    """413 when the job's estimated audio does not fit the jobs' disk limit (less what stored jobs hold or will hold)
    or the data directory's free space (less a reserve)."""
    need = estimated_bytes(characters)
    reserved = await asyncio.to_thread(store.reserved_bytes)
    limit = int(settings.job_disk_limit_gib * 2**30)
    free = shutil.disk_usage(store.data_dir).free - FREE_SPACE_RESERVE_BYTES
    if need > limit - reserved or need > free:
        room = max(0, min(limit - reserved, free))
        raise APIError(
            413,
            f"the job's audio needs about {need / 2**20:.1f} MiB on disk and {room / 2**20:.1f} MiB are left "
            "(CHATTERBOX_JOB_DISK_LIMIT_GIB, less what stored jobs hold, and the data directory's free space); "
            "delete finished jobs or send a shorter input",
            param="input",
            code="disk_limit_exceeded",
        )
