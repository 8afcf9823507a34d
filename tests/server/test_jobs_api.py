"""Long-form speech jobs over real HTTP (JOBS_API.md), on the tiny English model with the torch engine (fast on a
CPU; every job's piece goes through T3 and S3Gen as in production): the contract from submit to delete, uploads,
concurrent jobs, cancelling mid-job, every limit, and a server SIGKILLed mid-job that resumes where it stopped and
makes the audio an uninterrupted job makes.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from server_utils import Server, assert_error, make_settings, start_server, stop_server

from chatterbox_vllm.tts import ChatterboxTTS
from support.jobs import JOBS, completed, create, events, vtt_times, wait_for
from support.processes import free_port, server_process

RATE = 24000
BOOK = (
    "# Opening\nThe first chapter starts here. It has two short sentences.\n\n"
    "## Second part\nThe second chapter follows after a longer pause. Then it ends."
)


@pytest.fixture(scope="module")
def torch_tts(english_tiny_checkpoint: Path) -> Iterator[ChatterboxTTS]:
    tts = ChatterboxTTS.from_local(english_tiny_checkpoint, device="cpu", engine="torch")
    yield tts
    tts.close()


@pytest.fixture(scope="module")
def server(torch_tts: ChatterboxTTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # pieces of a sentence or so; 20 speech tokens (0.8 s) each keeps the jobs short on a CPU
    running = start_server(make_settings(tmp_path_factory.mktemp("jobs"), chunk_chars=40, max_new_tokens=20), torch_tts)
    yield running
    stop_server(running)


def data_dir(server: Server) -> Path:
    return Path(server.settings.resolved_data_dir())


def wav_of(url: str) -> np.ndarray:
    response = httpx.get(url, timeout=120)
    assert response.status_code == 200, response.text
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    assert rate == RATE
    return audio


def test_a_job_from_submit_to_delete(server: Server) -> None:
    """Markdown with two headings: chapters, events in piece order, audio = pieces + pauses, subtitles per piece."""
    job = create(server.url, input=BOOK, input_format="markdown", title="A small book", seed=11)
    assert job["chapters"] == [{"title": "Opening", "start_piece": 0}, {"title": "Second part", "start_piece": 3}]
    assert job["pieces_total"] == 6 and job["characters"] > 100 and job["voice"] == "alloy"
    seen = events(server.url, job["id"])
    assert seen[0]["type"] == "job.snapshot" and seen[-1]["type"] == "job.completed"
    pieces = [e["piece"] for e in seen if e["type"] == "job.piece"]
    assert [p["index"] for p in pieces] == list(range(6))  # in order, each once
    assert [p["chapter"] for p in pieces] == [0, 0, 0, 1, 1, 1] and pieces[0]["text"] == "Opening"
    etas = [e["job"]["eta_seconds"] for e in seen if e["type"] == "job.piece"][:-1]  # the job's own rate so far
    assert etas and all(eta is not None and eta >= 0 for eta in etas)
    done = seen[-1]["job"]
    assert done["status"] == "completed" and done["pieces_done"] == 6 and done["eta_seconds"] is None
    assert done["finished_at"] >= done["created_at"]

    base = f"{server.url}{JOBS}/{job['id']}"
    lengths = [len(wav_of(f"{base}/pieces/{i}/audio")) for i in range(6)]
    audio = httpx.get(f"{base}/audio", timeout=120)
    assert audio.headers["x-chatterbox-job-complete"] == "true"
    assert audio.headers["content-disposition"] == 'attachment; filename="A small book.wav"'
    samples, _ = soundfile.read(io.BytesIO(audio.content), dtype="float32")
    pauses = 4 * int(0.12 * RATE) + int(1.0 * RATE)  # a second before the second chapter's first piece
    assert len(samples) == sum(lengths) + pauses
    assert (
        round(pieces[-1]["end"] * RATE) == len(samples)
        and pieces[3]["start"] * RATE == sum(lengths[:3]) + 2 * 2880 + RATE
    )
    assert done["audio_seconds"] == pytest.approx(sum(lengths) / RATE, abs=1e-3)
    vtt = httpx.get(f"{base}/subtitles", timeout=60)
    assert vtt.headers["content-type"].startswith("text/vtt")
    times = vtt_times(vtt.text)
    assert len(times) == 6 and times[-1][1] == pytest.approx(len(samples) / RATE, abs=1e-3)
    srt = httpx.get(f"{base}/subtitles", params={"format": "srt"}, timeout=60)
    assert srt.text.count(" --> ") == 6
    mp3 = httpx.get(f"{base}/audio", params={"format": "mp3"}, timeout=120)
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg" and len(mp3.content) > 1000

    assert httpx.get(base, timeout=30).json()["status"] == "completed"
    listed = httpx.get(f"{server.url}{JOBS}", timeout=30).json()
    assert listed["object"] == "list" and job["id"] in [j["id"] for j in listed["data"]]
    deleted = httpx.delete(base, timeout=30)
    assert deleted.json() == {"id": job["id"], "object": "speech.job.deleted", "deleted": True}
    assert assert_error(httpx.get(base, timeout=30), 404)["code"] == "job_not_found"
    assert not (data_dir(server) / "jobs" / job["id"]).exists()
    assert httpx.get(f"{base}/events", timeout=30).status_code == 404


def test_an_upload_and_a_pasted_job_run_together(server: Server) -> None:
    """A .md upload (multipart, its name the title) and a JSON job submitted together both complete; while one runs,
    its audio is the pieces done so far."""
    files = {
        "file": ("notes.md", b"# Notes\nA file with one heading. And a second sentence to speak.", "text/markdown")
    }
    upload = httpx.post(f"{server.url}{JOBS}", files=files, timeout=60,
                        data={"model": "tts-1", "voice": "alloy", "response_format": "flac", "seed": "3"})  # fmt: skip
    assert upload.status_code == 202, upload.text
    pasted = create(server.url, input="Plain text without a heading. " * 4)
    first = upload.json()
    assert first["title"] == "notes" and first["response_format"] == "flac" and first["chapters"][0]["title"] == "Notes"
    partial = wait_for(server.url, pasted["id"], lambda job: 1 <= job["pieces_done"])
    if partial["status"] != "completed":
        running = httpx.get(f"{server.url}{JOBS}/{pasted['id']}/audio", timeout=60)
        assert running.status_code == 200 and running.headers["x-chatterbox-job-complete"] in ("false", "true")
    for job in (first, pasted):
        done = completed(server.url, job["id"])
        assert done["pieces_done"] == done["pieces_total"] >= 2
        assert httpx.delete(f"{server.url}{JOBS}/{job['id']}", timeout=60).status_code == 200


def test_deleting_a_running_job_cancels_it(server: Server) -> None:
    job = create(server.url, input="One more sentence to say. " * 12)
    seen: list[dict] = []
    reader = threading.Thread(target=lambda: seen.extend(events(server.url, job["id"])))
    reader.start()
    wait_for(server.url, job["id"], lambda j: j["pieces_done"] >= 1)
    missing = httpx.get(f"{server.url}{JOBS}/{job['id']}/pieces/{job['pieces_total']}/audio", timeout=30)
    assert assert_error(missing, 404)["code"] == "piece_not_ready"
    assert httpx.delete(f"{server.url}{JOBS}/{job['id']}", timeout=60).status_code == 200
    reader.join(60)
    assert not reader.is_alive() and seen[-1]["type"] == "job.cancelled"
    assert seen[-1]["job"]["pieces_done"] < seen[-1]["job"]["pieces_total"]
    assert not (data_dir(server) / "jobs" / job["id"]).exists()
    runner = server.app.state.jobs.runner  # type: ignore[attr-defined]
    assert runner.in_flight() == 0  # its pieces in flight were cancelled with it
    assert httpx.get(f"{server.url}{JOBS}/{job['id']}", timeout=30).status_code == 404


def test_every_limit_refuses_before_accepting(torch_tts: ChatterboxTTS, tmp_path: Path) -> None:
    # 0.002 GiB of disk: a job of ~350 characters fits (2 MiB estimated), one of 600 does not
    settings = make_settings(tmp_path, chunk_chars=40, max_new_tokens=20, job_max_input_chars=700,
                             job_max_upload_bytes=2000, job_max_jobs=2, job_disk_limit_gib=0.002)  # fmt: skip
    tight = start_server(settings, torch_tts)
    try:
        url = f"{tight.url}{JOBS}"
        body = {"model": "tts-1", "voice": "alloy"}
        too_long = httpx.post(url, json={**body, "input": "x" * 701}, timeout=30)
        assert assert_error(too_long, 400, "input")["code"] == "string_above_max_length"
        too_big = httpx.post(url, data=body, files={"file": ("a.txt", b"word " * 500, "text/plain")}, timeout=30)
        assert assert_error(too_big, 413)["code"] == "file_too_large"
        pdf = httpx.post(url, data=body, files={"file": ("a.pdf", b"%PDF-1.4 ...", "application/pdf")}, timeout=30)
        assert assert_error(pdf, 415)["code"] == "unsupported_file_type"
        disk = httpx.post(url, json={**body, "input": "A sentence. " * 50}, timeout=30)
        assert assert_error(disk, 413)["code"] == "disk_limit_exceeded"
        assert assert_error(httpx.post(url, json={**body, "input": " \n "}, timeout=30), 400)["code"] in (
            "empty_input", "invalid_value")  # fmt: skip
        assert assert_error(httpx.post(url, json={**body, "voice": "nobody", "input": "Hi."}, timeout=30), 400)[
            "code"] == "voice_not_found"  # fmt: skip
        first, second = (create(tight.url, input="Short.") for _ in range(2))
        assert assert_error(httpx.post(url, json={**body, "input": "Short."}, timeout=30), 429)["code"] == (
            "job_limit_reached")  # fmt: skip
        for job in (first, second):
            assert httpx.delete(f"{url}/{job['id']}", timeout=60).status_code == 200
        assert assert_error(httpx.get(f"{url}/job_missing", timeout=30), 404)["code"] == "job_not_found"
    finally:
        stop_server(tight)


def test_a_server_killed_mid_job_resumes_it_and_makes_the_same_audio(tmp_path: Path) -> None:
    """`chatterbox-vllm serve` (random-tiny, torch engine) SIGKILLed after a job's first pieces: restarted on the same
    data directory, the job completes, the pieces finished before the kill are untouched (bytes and mtime), and its
    audio is bit-equal to a new job of the same request and seed on the same server. CHATTERBOX_MAX_BATCH_SIZE=1 (and
    so an S3Gen batch of 1): each piece alone in T3 and S3Gen, as in the uninterrupted run, so batching cannot change
    a piece's samples between the runs."""
    env = {
        **os.environ,
        "CHATTERBOX_MODEL": "random-tiny",
        "CHATTERBOX_ENGINE": "torch",
        "CHATTERBOX_DEVICE": "cpu",
        "CHATTERBOX_CACHE_DIR": str(tmp_path / "cache"),
        "CHATTERBOX_DATA_DIR": str(tmp_path / "data"),
        "CHATTERBOX_VOICES_DIR": str(tmp_path / "voices"),
        "CHATTERBOX_MAX_NEW_TOKENS": "20",
        "CHATTERBOX_CHUNK_CHARS": "40",
        "CHATTERBOX_MAX_BATCH_SIZE": "1",
        "CHATTERBOX_HOST": "127.0.0.1",
    }
    args = [sys.executable, "-m", "chatterbox_vllm.cli", "serve"]
    request = {"input": "A sentence to speak, then another one. " * 5, "seed": 42}
    port = free_port()
    with server_process(args, {**env, "CHATTERBOX_PORT": str(port)}, port, tmp_path / "first.log") as (url, process):
        job = create(url, **request)
        wait_for(url, job["id"], lambda j: j["pieces_done"] >= 2, step=0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    pieces_dir = tmp_path / "data" / "jobs" / job["id"]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in pieces_dir.glob("*.flac")}
    assert 2 <= len(before) < job["pieces_total"], "the kill came after the job's end"
    port = free_port()
    with server_process(args, {**env, "CHATTERBOX_PORT": str(port)}, port, tmp_path / "second.log") as (url, _):
        resumed = completed(url, job["id"])
        assert resumed["pieces_done"] == resumed["pieces_total"] == job["pieces_total"]
        after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in pieces_dir.glob("*.flac")}
        assert all(after[name] == before[name] for name in before)
        fresh = create(url, **request)
        completed(url, fresh["id"])
        got = httpx.get(f"{url}{JOBS}/{job['id']}/audio", timeout=120).content
        want = httpx.get(f"{url}{JOBS}/{fresh['id']}/audio", timeout=120).content
        assert soundfile.info(io.BytesIO(got)).frames > 0 and got == want
