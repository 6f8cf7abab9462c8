"""The heartbeat thread: every few seconds (at most worker_ttl / 3 apart), whatever the pipeline does, it
keeps the idle time of this worker's in-flight jobs low (`keep_alive`: nobody reclaims them however long a
batch takes), gives back the jobs Redis still has pending for it that it no longer works on
(`release_orphans`: a finish lost while Redis was away or restarting), and reports the worker alive
(`report_worker`, for take-over and `clipsearch status`)."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import redis

from clipsearch_core.jobqueue import JobQueue, WorkerInfo

from .inflight import InFlight

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)

# Far longer than a job just read or claimed takes to reach InFlight, even behind a slow Redis call of the
# heartbeat's (a job given away while still worked on is only redone, counted once, but is wasted work).
ORPHAN_IDLE_MS = 10_000


class Heartbeat:
    """The heartbeat thread of one worker; it ends when `closed` is set."""

    def __init__(self, queue: JobQueue, consumer: str, in_flight: InFlight, info: Callable[[], WorkerInfo], *,
                 visibility_timeout_s: float, worker_ttl_s: float, closed: threading.Event) -> None:
        self._queue = queue
        self._consumer = consumer
        self._in_flight = in_flight
        self._info = info  # what the worker reports about itself now (its last_seen_ms is set by Redis)
        self._interval = max(0.2, min(5.0, visibility_timeout_s / 3, worker_ttl_s / 3))
        self._closed = closed
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def _beat(self) -> None:
        """Keeps this worker's in-flight jobs from looking abandoned, however long a batch takes, and
        reports the worker as alive (for `clipsearch status`)."""
        interval = self._interval
        while True:
            wait = interval
            try:
                with self._in_flight.lock:  # held, so that no job is claimed back after its release
                    # Jobs Redis says we hold but we neither work on nor left for a retry (a finish lost while
                    # Redis was away or restarting): given back now, not after the visibility timeout
                    # (jobqueue.workers). First: its idle times are read before a slow call could add to them.
                    orphans = self._queue.release_orphans(self._consumer, self._in_flight.not_orphans(),
                                                          ORPHAN_IDLE_MS)
                    self._queue.keep_alive(self._consumer, self._in_flight.held())
                if orphans:
                    log.warning("gave back %d jobs Redis still had pending for this worker, which no longer "
                                "works on them (Redis unreachable or restarted); they are redone", len(orphans))
                self._queue.report_worker(self._info())
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
                wait = min(interval, 1.0)  # Redis back: beat (and give orphans back) soon, not a whole interval later
            if self._closed.wait(wait):
                return
