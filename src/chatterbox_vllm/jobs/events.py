"""In-process pub/sub of job events: the runner publishes, each SSE stream (`GET .../events`) subscribes to its job.

A subscriber's queue is unbounded: events are few (one per piece) and a stream that stops reading ends with its
client's connection.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

TERMINAL_EVENTS = ("job.completed", "job.failed", "job.cancelled")


class JobEvents:
    def __init__(self) -> None:
        self._queues: defaultdict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def subscribe(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self._queues.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[job_id]

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        for queue in list(self._queues.get(job_id, ())):
            queue.put_nowait(event)
