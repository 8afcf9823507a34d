"""The jobs runner inside a served app (tiny English model, torch engine): a piece that fails twice fails only its
own job, a piece that cannot be stored fails its job with `disk_full`, and the pieces in flight leave room for
interactive requests. The failures are injected where the real component would fail (the synthesizer's piece, the
store's write); everything else runs for real."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatterbox_vllm.tts import ChatterboxTTS
from support.jobs import completed, create, ended
from support.servers import Server, make_settings, start_server, stop_server


@pytest.fixture(scope="module")
def served(english_tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")
    running = start_server(make_settings(tmp_path_factory.mktemp("runner"), chunk_chars=40, max_new_tokens=12), tts)
    yield running
    stop_server(running)
    tts.close()


def test_a_failing_piece_is_retried_once_then_fails_only_its_job(served: Server, monkeypatch) -> None:
    synthesizer = served.app.state.model.loaded.synthesizer  # type: ignore[attr-defined]
    speak = synthesizer.speak_piece
    tries: list[str] = []

    async def flaky(text, voice, seed):
        if "Broken" in text:
            tries.append(text)
            raise RuntimeError("injected failure")
        return await speak(text, voice, seed)

    monkeypatch.setattr(synthesizer, "speak_piece", flaky)
    bad = create(served.url, input="A fine first piece here. Broken piece that never speaks.")
    good = create(served.url, input="Another job altogether. It speaks every piece.")
    failed = ended(served.url, bad["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "synthesis_failed" and failed["finished_at"]
    assert tries == ["Broken piece that never speaks."] * 2  # tried once more, then given up
    done = completed(served.url, good["id"])
    assert done["pieces_done"] == done["pieces_total"] == 2


def test_a_piece_that_cannot_be_stored_fails_its_job_with_disk_full(served: Server, monkeypatch) -> None:
    store = served.app.state.jobs.store  # type: ignore[attr-defined]
    save = store.save_piece

    def full(job_id, index, wav):
        if index == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(job_id, index, wav)

    monkeypatch.setattr(store, "save_piece", full)
    job = create(served.url, input="The first piece is stored. The second one is not.")
    state = ended(served.url, job["id"])
    assert state["status"] == "failed" and state["error"]["code"] == "disk_full"


def test_job_pieces_leave_t3_room_for_interactive_requests(served: Server) -> None:
    runner = served.app.state.jobs.runner  # type: ignore[attr-defined]
    admission = served.app.state.admission  # type: ignore[attr-defined]
    beside = served.app.state.settings.job_t3_rows_beside_requests  # type: ignore[attr-defined]
    assert not admission.requests_recent()  # the tests before ran no speech request
    assert runner.capacity() == runner.max_batch  # idle: a whole batch of pieces
    admission.active = 1
    try:
        # a request in progress: the jobs' cap, within its row and a quarter of the batch kept free for the next ones
        assert runner.capacity() == max(1, min(beside, runner.max_batch - 1 - runner.max_batch // 4))
        admission.active = runner.max_batch + 5
        assert runner.capacity() == 1  # a job always moves on
    finally:
        admission.active = 0


def test_job_pieces_stay_few_in_t3_while_requests_keep_coming(served: Server) -> None:
    runner = served.app.state.jobs.runner  # type: ignore[attr-defined]
    admission = served.app.state.admission  # type: ignore[attr-defined]
    settings = served.app.state.settings  # type: ignore[attr-defined]
    admission.acquire()
    admission.release()  # a request ended just now: the next may come a moment later
    assert runner.capacity() == min(settings.job_t3_rows_beside_requests, runner.max_batch)
