"""A worker's side of the queue: reading jobs (`read`, `reclaim_stale`), keeping them (`keep_alive`), their
inline bytes and transient errors, and acknowledging them (`finish`).

Completion is exactly-once for the counters even though delivery is at-least-once: one Lua script
XACKs the entry and bumps the counters only when the XACK really removed it from the pending list.
Finished entries are XDELed (the stream stays bounded); inline bytes are deleted when a job is
indexed and kept for FAILED_BLOB_TTL_S when it failed, so that it can be retried.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Sequence

from .connection import QueuePart
from .jobs import Job, text
from .keys import GROUP
from .scripts import FINISH_CHUNK

__all__ = ["Delivery"]


class Delivery(QueuePart):
    """What a worker does with jobs between taking and acknowledging them."""

    def read(self, consumer: str, count: int, block_ms: int) -> list[Job]:
        """Delivers up to `count` new jobs to `consumer` (they stay pending until `finish`), waiting up to
        `block_ms` for the first one; an `interrupt_read` of the connection ends the wait at once."""
        reply: Any = self.redis.xreadgroup(GROUP, consumer, {self.keys.jobs: ">"}, count=count, block=block_ms)
        return [Job.from_entry(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    def reclaim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Job]:
        """Takes over jobs that another consumer has held longer than `min_idle_ms` (a crashed worker's,
        or this worker's own transient failures), with their delivery counts."""
        jobs_key = self.keys.jobs
        reply = self.redis.xautoclaim(jobs_key, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0",
                                      count=count)
        jobs = [Job.from_entry(entry_id, fields) for entry_id, fields in reply[1] if fields]
        if not jobs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.xpending_range(jobs_key, GROUP, min=job.entry_id, max=job.entry_id, count=1)
        counts = [int(rows[0]["times_delivered"]) if rows else 1 for rows in pipe.execute()]
        return [replace(job, attempts=n) for job, n in zip(jobs, counts)]

    def keep_alive(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Resets the idle time of jobs this consumer is working on, so nobody reclaims them (a heartbeat).
        JUSTID leaves the delivery counts alone."""
        if entry_ids:
            self.redis.xclaim(self.keys.jobs, GROUP, consumer, min_idle_time=0, message_ids=list(entry_ids),
                              justid=True)

    def load_blobs(self, jobs: Sequence[Job]) -> list[bytes | None]:
        """The inline bytes of each job (None for jobs that read their image from a uri, or whose bytes are gone)."""
        wanted = [job for job in jobs if job.has_blob]
        raw = self.redis.execute_command("MGET", *[self.keys.blob(job.uid) for job in wanted]) if wanted else []
        by_uid = dict(zip((job.uid for job in wanted), raw))
        return [by_uid.get(job.uid) for job in jobs]

    def record_transient_errors(self, errors: Sequence[tuple[Job, str]]) -> None:
        """Remembers why each job will be retried (reported if it finally dead-letters), in one command."""
        if errors:
            self.redis.hset(self.keys.last_error, mapping={job.uid: reason for job, reason in errors})

    def last_errors(self, jobs: Sequence[Job]) -> list[str | None]:
        """The transient error last recorded for each job (None: none)."""
        if not jobs:
            return []
        found = self.redis.hmget(self.keys.last_error, [job.uid for job in jobs])
        return [None if v is None else text(v) for v in found]

    def finish(self, outcomes: Iterable[tuple[Job, str | None]]) -> int:
        """Marks jobs done: (job, None) as indexed, (job, reason) as failed (dead-lettered).
        Returns how many were still pending (the others were already finished by someone).
        One script call per FINISH_CHUNK jobs."""
        outcomes = list(outcomes)
        if not outcomes:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(outcomes), FINISH_CHUNK):
            self.scripts.finish(pipe, outcomes[start:start + FINISH_CHUNK])
        return sum(int(x) for x in pipe.execute())
