"""The gate between long-form jobs' decoded pieces and S3Gen (`server/job_gate.py`), with the server's real
`Admission` and asyncio: held while speech requests are in progress, one at a time while they keep coming, free
once they stop, and never starved for longer than `max_defer_s`."""

from __future__ import annotations

import asyncio

import pytest

from chatterbox_vllm.server.admission import Admission
from chatterbox_vllm.server.job_gate import JobGate


async def _enter_and_hold(gate: JobGate, release: asyncio.Event, entered: list[int], index: int) -> None:
    async with gate.entered():
        entered.append(index)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)


def test_an_idle_server_lets_every_piece_through_at_once() -> None:
    async def scenario() -> None:
        gate = JobGate(Admission(8), rows_beside=1, max_defer_s=60)
        release, entered = asyncio.Event(), []
        tasks = [asyncio.create_task(_enter_and_hold(gate, release, entered, i)) for i in range(6)]
        await _settle()
        assert sorted(entered) == list(range(6)) and gate.in_s3gen == 6
        release.set()
        await asyncio.gather(*tasks)
        assert gate.in_s3gen == 0

    asyncio.run(scenario())


def test_pieces_wait_while_a_request_is_in_progress_then_go_one_at_a_time_while_requests_are_recent() -> None:
    async def scenario() -> None:
        admission = Admission(8)
        gate = JobGate(admission, rows_beside=1, max_defer_s=60, quiet_s=60)
        admission.acquire()  # a speech request in progress
        release, entered = asyncio.Event(), []
        tasks = [asyncio.create_task(_enter_and_hold(gate, release, entered, i)) for i in range(3)]
        await _settle()
        assert entered == [] and gate.in_s3gen == 0  # nothing reaches S3Gen beside the request
        admission.release()  # the request ended a moment ago: recent, so one job piece at a time
        await _settle()
        assert len(entered) == 1 and gate.in_s3gen == 1
        release.set()
        await asyncio.gather(*tasks)
        assert sorted(entered) == [0, 1, 2] and gate.in_s3gen == 0

    asyncio.run(scenario())


def test_rows_beside_bounds_the_job_pieces_in_s3gen_while_requests_are_recent() -> None:
    async def scenario() -> None:
        admission = Admission(8)
        gate = JobGate(admission, rows_beside=3, max_defer_s=60, quiet_s=60)
        admission.acquire()
        admission.release()
        release, entered = asyncio.Event(), []
        tasks = [asyncio.create_task(_enter_and_hold(gate, release, entered, i)) for i in range(5)]
        await _settle()
        assert len(entered) == 3
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_a_piece_held_past_max_defer_goes_beside_requests() -> None:
    async def scenario() -> None:
        admission = Admission(8)
        gate = JobGate(admission, rows_beside=1, max_defer_s=0.1, quiet_s=60)
        admission.acquire()  # and it never ends: constant load
        release, entered = asyncio.Event(), []
        tasks = [asyncio.create_task(_enter_and_hold(gate, release, entered, i)) for i in range(2)]
        await asyncio.sleep(0.03)
        assert entered == []
        await asyncio.sleep(0.25)
        assert len(entered) == 1  # the first goes after max_defer_s, alone
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert sorted(entered) == [0, 1]

    asyncio.run(scenario())


def test_a_failed_or_cancelled_piece_gives_its_place_back() -> None:
    async def scenario() -> None:
        admission = Admission(8)
        gate = JobGate(admission, rows_beside=1, max_defer_s=60, quiet_s=60)
        admission.acquire()
        admission.release()
        with pytest.raises(RuntimeError):
            async with gate.entered():
                raise RuntimeError("S3Gen failed this piece")
        assert gate.in_s3gen == 0
        release, entered = asyncio.Event(), []
        holder = asyncio.create_task(_enter_and_hold(gate, release, entered, 0))
        await _settle()
        assert gate.in_s3gen == 1
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert gate.in_s3gen == 0

    asyncio.run(scenario())


def test_admission_counts_requests_as_recent_for_quiet_s_after_the_last_one() -> None:
    admission = Admission(2)
    assert not admission.requests_recent(10)  # never busy
    admission.acquire()
    assert admission.requests_recent(0)  # in progress, however short the window
    admission.release()
    assert admission.requests_recent(10) and not admission.requests_recent(0)


def test_watchers_hear_the_requests_in_progress() -> None:
    """S3Gen's workers watch the count (a job's batch pauses between flow steps while it is above 0): told at once
    and on every change."""
    admission = Admission(max_queue=4)
    heard: list[int] = []
    admission.acquire()
    admission.watch(heard.append)
    admission.acquire()
    admission.release()
    admission.release()
    assert heard == [1, 2, 1, 0]
