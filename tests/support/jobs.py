"""Helpers of the long-form jobs tests: submit, follow the SSE events, wait, decode."""

from __future__ import annotations

import json
import re
import time

import httpx

JOBS = "/v1/audio/speech/jobs"


def create(url: str, **fields: object) -> dict:
    body = {"model": "tts-1", "voice": "alloy", "response_format": "wav", **fields}
    response = httpx.post(f"{url}{JOBS}", json=body, timeout=120)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["object"] == "speech.job" and re.fullmatch(r"job_[0-9a-f]{32}", job["id"])
    return job


def events(url: str, job_id: str, stop_after: str | None = None, timeout: float = 600) -> list[dict]:
    """The job's SSE events until the stream closes (or the first event of type `stop_after`)."""
    seen: list[dict] = []
    with httpx.stream("GET", f"{url}{JOBS}/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["type"] == stop_after:
                    break
    return seen


def wait_for(url: str, job_id: str, condition, timeout: float = 600, step: float = 0.05) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}{JOBS}/{job_id}", timeout=30).json()
        if condition(job):
            return job
        assert time.monotonic() < deadline, job
        assert job["status"] not in ("failed", "cancelled"), job
        time.sleep(step)


def ended(url: str, job_id: str, timeout: float = 600) -> dict:
    """The job once it has ended (completed, failed or cancelled)."""
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{url}{JOBS}/{job_id}", timeout=30).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def completed(url: str, job_id: str, timeout: float = 600) -> dict:
    return wait_for(url, job_id, lambda job: job["status"] == "completed", timeout, step=0.2)


def vtt_times(text: str) -> list[tuple[float, float]]:
    """(start, end) seconds of each WebVTT cue."""

    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    return [
        (seconds(a), seconds(b)) for a, b in re.findall(r"(\d+:\d\d:\d\d\.\d\d\d) --> (\d+:\d\d:\d\d\.\d\d\d)", text)
    ]
