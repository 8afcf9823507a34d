"""The server's places for speech requests in progress (`max_queue`), shared by every model it serves.

Owns only the count and the 429 beyond it; who takes and gives back a place is the speech job (`speech_job.py`).
"""

from __future__ import annotations

from .errors import APIError


class Admission:
    """The server's `max_queue` places for speech requests, shared by every model it serves; 429 beyond them."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.active = 0

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

    def release(self) -> None:
        self.active -= 1
