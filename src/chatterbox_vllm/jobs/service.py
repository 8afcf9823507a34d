"""What the server holds for long-form jobs: the store, the events and the runner, opened and started with the app
(its lifespan) and stopped with it. A data directory that cannot be opened leaves the server serving speech; the
jobs routes then answer 503 with the reason.
"""

from __future__ import annotations

import logging
import sqlite3

from ..server.errors import APIError, describe_failure
from ..server.registry import ModelRegistry
from ..settings import Settings
from .events import JobEvents
from .runner import JobRunner
from .store import JobStore

log = logging.getLogger(__name__)


class JobService:
    def __init__(self, settings: Settings, models: ModelRegistry) -> None:
        self.settings = settings
        self.models = models
        self.events = JobEvents()
        self._store: JobStore | None = None
        self._runner: JobRunner | None = None
        self.unavailable: str | None = None

    def start(self) -> None:
        """Open the data directory's store and start the runner (on the running event loop)."""
        directory = self.settings.resolved_data_dir()
        try:
            self._store = JobStore(directory)
        except (OSError, sqlite3.Error) as exc:
            self.unavailable = f"the jobs' data directory {directory} cannot be used ({describe_failure(exc)})"
            log.error("%s; long-form jobs are off (CHATTERBOX_DATA_DIR)", self.unavailable)
            return
        log.info("jobs data directory: %s", directory)
        self._runner = JobRunner(self._store, self.models, self.settings, self.events)
        self._runner.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.stop()
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> JobStore:
        self._require()
        assert self._store is not None
        return self._store

    @property
    def runner(self) -> JobRunner:
        self._require()
        assert self._runner is not None
        return self._runner

    def _require(self) -> None:
        if self._store is None or self._runner is None:
            raise APIError(503, self.unavailable or "long-form jobs are starting", code="jobs_unavailable")
