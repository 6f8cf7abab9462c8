"""The jobs this worker holds: the entry ids it took and has not finished (`InFlight`), under the one lock
that the feeder (adds), the pipeline (forgets), the heartbeat (keeps them alive, gives orphans back) and a
stop (releases them all) take, so that no job is kept alive after its release."""

from __future__ import annotations

import logging
import threading
from typing import Iterable

import redis

from clipsearch_core.jobqueue import Job, JobQueue

__all__ = ["InFlight"]

log = logging.getLogger(__name__)


class InFlight:
    """Entry ids of the jobs taken and not yet finished."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self.lock = threading.Lock()  # held by the heartbeat across its Redis calls on `held()`

    def add(self, jobs: Iterable[Job]) -> None:
        with self.lock:
            self._ids.update(job.entry_id for job in jobs)

    def forget(self, jobs: Iterable[Job]) -> None:
        with self.lock:
            self._ids.difference_update(job.entry_id for job in jobs)

    def held(self) -> list[str]:
        """The entry ids now (the caller holds `lock` when it must act on exactly these)."""
        return list(self._ids)

    def release_all(self, queue: JobQueue, consumer: str, worker_ttl_s: float) -> None:
        """Gives back the jobs this worker took and did not finish (prefetched, interrupted, or left by a
        fatal error) so that live workers take them at once, and leaves the consumer group. The
        heartbeat no longer touches them: the set is cleared under its lock first."""
        with self.lock:
            self._ids.clear()
            try:
                released = queue.release(consumer)
            except redis.RedisError as exc:
                log.warning("could not release this worker's jobs (%s); others take them when its heartbeat "
                            "is older than %.0fs", exc, worker_ttl_s)
                return
        if released:
            log.info("released %d unfinished jobs to other workers", released)
