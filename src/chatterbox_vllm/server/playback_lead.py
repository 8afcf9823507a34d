"""How far a stream's audio runs ahead of a listener playing it in real time.

After a stream's first audio, later partial vocodes of its first piece only keep the listener fed until the whole
piece is vocoded, and each one costs S3Gen time (the voice prompt's flow pass again) that the whole piece's vocode
then replaces. On a fast GPU T3 writes speech ~10x faster than it plays (H200, 2026-12-03: 289 tokens/s, 25 tokens
a second of audio), so once a second or so of audio is out the whole piece arrives before the listener runs dry;
on a slow one the lead stays small and partials go on. The synthesizer asks `ahead_s` before each later partial.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class PlaybackLead:
    """Audio seconds sent, against the seconds since the first of it left (a listener starting then)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first_sent_at: float | None = None
        self._sent_s = 0.0

    def sent(self, seconds: float) -> None:
        """Count audio just handed to the client."""
        if seconds <= 0:
            return
        if self._first_sent_at is None:
            self._first_sent_at = self._clock()
        self._sent_s += seconds

    def ahead_s(self) -> float:
        """Seconds of sent audio the listener has not played yet (0 before any audio; negative once it ran dry)."""
        if self._first_sent_at is None:
            return 0.0
        return self._sent_s - (self._clock() - self._first_sent_at)
