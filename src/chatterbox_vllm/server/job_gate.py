"""When a long-form job's piece may go to S3Gen: only where speech requests leave the GPU free.

Measured on an H200 (2026-12-03 b, BENCHMARKS.md "Long-form jobs"): with job pieces entering S3Gen whenever they
were ready (one per batch while requests came), a request's first byte took 1.58x as long as on an idle server.
S3Gen then ran a job piece after another, so a request's T3 steps time-sliced the GPU with it and its first partial
waited for the piece under way. So a job's piece waits here, before S3Gen, while any request is in progress; while
requests came within `REQUESTS_QUIET_S` it goes only while fewer than `rows_beside` job pieces are in S3Gen
(CHATTERBOX_JOB_ROWS_BESIDE_REQUESTS, 1: one job piece at most is what a new request can find under way); once
requests have stopped, pieces go as they come and S3Gen batches them.

A piece held longer than `max_defer_s` goes anyway (`rows_beside` at a time), so a server under constant load still
moves its jobs on, slowly, instead of starving them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from .admission import REQUESTS_QUIET_S, Admission

POLL_S = 0.01  # how often a held piece looks again: a tenth of one job piece's S3Gen time on an H200


class JobGate:
    """Admits long-form job pieces to one S3Gen (a synthesizer's) around the server's speech requests."""

    def __init__(
        self, admission: Admission, *, rows_beside: int, max_defer_s: float, quiet_s: float = REQUESTS_QUIET_S
    ) -> None:
        self.admission = admission
        self.rows_beside = rows_beside
        self.max_defer_s = max_defer_s
        self.quiet_s = quiet_s
        self.in_s3gen = 0  # job pieces let through and not yet back

    def may_enter(self, waited_s: float) -> bool:
        """Whether a piece that has waited `waited_s` goes now (the rules in the module's docstring)."""
        if self.admission.active > 0:
            return waited_s >= self.max_defer_s and self.in_s3gen < self.rows_beside
        if self.admission.requests_recent(self.quiet_s):
            return self.in_s3gen < self.rows_beside
        return True

    @contextlib.asynccontextmanager
    async def entered(self) -> AsyncIterator[None]:
        """Wait for the piece's turn, then hold its place in S3Gen for the block (given back however it ends)."""
        started = time.monotonic()
        while not self.may_enter(time.monotonic() - started):
            await asyncio.sleep(POLL_S)
        self.in_s3gen += 1
        try:
            yield
        finally:
            self.in_s3gen -= 1
