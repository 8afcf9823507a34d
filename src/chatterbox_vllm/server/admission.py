"""The server's places for speech requests in progress (`max_queue`), shared by every model it serves.

Owns the count, the 429 beyond it, and when requests were last in progress (long-form jobs yield to requests while
they come: `job_gate.py`, `jobs/runner.py`). Who takes and gives back a place is the speech job (`speech_job.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import APIError

# Requests come one after another (a stream's pieces, the next request a moment later): the server counts as busy
# with requests for this long after the last one ended, so long-form jobs do not refill the GPU between two of them.
REQUESTS_QUIET_S = 2.0


class Admission:
    """The server's `max_queue` places for speech requests, shared by every model it serves; 429 beyond them."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.active = 0
        self._last_release = -float("inf")  # monotonic time a request last ended
        self._watchers: list[Callable[[int], None]] = []

    def watch(self, watcher: Callable[[int], None]) -> None:
        """Tell `watcher` the count of requests in progress now and whenever it changes (S3Gen's workers: a long-form
        job's batch pauses between its flow steps while any is in progress)."""
        self._watchers.append(watcher)
        watcher(self.active)

    def _changed(self) -> None:
        for watcher in self._watchers:
            watcher(self.active)

    def acquire(self) -> None:
        """Take a place (given back by `release` when the response ends), or 429 with Retry-After."""
        if self.active >= self.max_queue:
            raise APIError(
                429,
                f"the server is busy ({self.active} speech requests in progress); retry shortly",
                code="server_busy",
                headers={"Retry-After": "2"},
            )
        self.active += 1
        self._changed()

    def release(self) -> None:
        self.active -= 1
        self._last_release = time.monotonic()
        self._changed()

    def requests_recent(self, quiet_s: float = REQUESTS_QUIET_S) -> bool:
        """Whether a speech request is in progress or ended within `quiet_s` seconds."""
        return self.active > 0 or time.monotonic() - self._last_release < quiet_s
