"""The jobs this worker holds: the entry ids it took and has not finished (`InFlight`), under the one lock
that the feeder (adds), the pipeline (forgets), the heartbeat (keeps them alive, gives orphans back) and a
stop (releases them all) take, so that no job is kept alive after its release. Also the jobs it left
pending on purpose after a transient error (`retry_later`): not kept alive, so that the visibility timeout
redelivers them with their delivery count raised (and --max-deliveries dead-letters them in the end), and
not orphans either, until that timeout has passed."""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

import redis

from clipsearch_core.jobqueue import Job, JobQueue

__all__ = ["InFlight"]

log = logging.getLogger(__name__)


class InFlight:
    """Entry ids of the jobs taken and not yet finished."""

    def __init__(self, visibility_timeout_s: float) -> None:
        self._ids: set[str] = set()
        self._retrying: dict[str, float] = {}  # entry id -> when it was left pending for a retry (monotonic)
        self._visibility_timeout_s = visibility_timeout_s
        self.lock = threading.Lock()  # held by the heartbeat across its Redis calls on `held()`

    def add(self, jobs: Iterable[Job]) -> None:
        with self.lock:
            for job in jobs:
                self._ids.add(job.entry_id)
                self._retrying.pop(job.entry_id, None)  # delivered again

    def retry_later(self, jobs: Iterable[Job]) -> None:
        """Jobs left pending after a transient error, for the visibility timeout to redeliver."""
        now = time.monotonic()
        with self.lock:
            self._retrying.update((job.entry_id, now) for job in jobs)

    def not_orphans(self) -> list[str]:
        """The entry ids Redis may hold pending for this worker that are not orphans: those in flight and
        those left for a retry within the visibility timeout (the caller holds `lock`)."""
        # the visibility timeout, then the feeder's next look for stale jobs (every min(30, timeout / 2) s)
        visible = self._visibility_timeout_s
        expired = time.monotonic() - (visible + min(30.0, visible / 2) + 10.0)
        for entry_id in [e for e, left in self._retrying.items() if left < expired]:
            del self._retrying[entry_id]  # redelivered by now (to this worker or another)
        return [*self._ids, *self._retrying]

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
            self._retrying.clear()
            try:
                released = queue.release(consumer)
            except redis.RedisError as exc:
                log.warning("could not release this worker's jobs (%s); others take them when its heartbeat "
                            "is older than %.0fs", exc, worker_ttl_s)
                return
        if released:
            log.info("released %d unfinished jobs to other workers", released)
