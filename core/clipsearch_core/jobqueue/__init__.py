"""The Redis ingestion queue: every key name, the job format, submission, delivery and completion.

This package is the stable entry point: `from clipsearch_core import jobqueue` gives the queue's object,
`JobQueue`, its values, its constants, and the functions taking `(r, keys, ...)` that callers used before
`JobQueue` existed (each one a call of the method of the same or the old name on `JobQueue(r, keys)`).
New code holds a `JobQueue` (its Lua scripts are then registered once, not per call).

Its modules, one part each:
  keys        every name in Redis: the key layout (`Keys`), the group, the parking consumer, TTLs
  scripts     the Lua scripts, each naming its KEYS and ARGV slots, and the one method ordering them
  jobs        the values: `Job` (and its stream-entry format), `Submitted`, `Progress`, `Failure`
  connection  `connect`, a connection's id and interrupting its blocking read
  submission  `submit` (atomic, once per request id), `find_request`, `retry`
  delivery    `read`, `reclaim_stale`, `keep_alive`, inline bytes, transient errors, `finish`
              (exactly-once counts over at-least-once delivery)
  workers     heartbeats (`WorkerInfo`) and recovery: `take_over_dead`, `release`, `release_orphans`
  state       `QueueStatus` (`status`), `usage`, `progress`, `failures`
  queue       `JobQueue`, all of the above bound to one client and one key prefix
"""

from __future__ import annotations

from typing import Iterable, Sequence

import redis

from .connection import connect, connection_id, interrupt_read
from .jobs import FAILED, INDEXED, Failure, Job, Progress, Submitted
from .keys import BATCH_TTL_S, FAILED_BLOB_TTL_S, FAILURES_MAXLEN, GROUP, PARKING, REQUEST_TTL_S, Keys
from .queue import JobQueue
from .scripts import FINISH_CHUNK
from .state import QueueStatus
from .workers import RELEASED_IDLE_MS, WORKER_ALIVE_S, WorkerInfo, now_ms, redis_now_ms

__all__ = [
    "BATCH_TTL_S",
    "FAILED",
    "FAILED_BLOB_TTL_S",
    "FAILURES_MAXLEN",
    "FINISH_CHUNK",
    "GROUP",
    "INDEXED",
    "PARKING",
    "RELEASED_IDLE_MS",
    "REQUEST_TTL_S",
    "WORKER_ALIVE_S",
    "Failure",
    "Job",
    "JobQueue",
    "Keys",
    "Progress",
    "QueueStatus",
    "Submitted",
    "WorkerInfo",
    "connect",
    "connection_id",
    "ensure_group",
    "find_request",
    "finish",
    "get_progress",
    "interrupt_read",
    "keep_alive",
    "last_errors",
    "list_failures",
    "load_blobs",
    "now_ms",
    "read_jobs",
    "reclaim_stale",
    "record_transient_errors",
    "redis_now_ms",
    "release",
    "release_orphans",
    "remove_worker",
    "report_worker",
    "retry",
    "status",
    "submit",
    "take_over_dead",
    "usage",
]


# The functions below are the facade: each is `JobQueue(r, keys).<operation>(...)`.

def ensure_group(r: redis.Redis, keys: Keys) -> None:
    JobQueue(r, keys).ensure_group()


def usage(r: redis.Redis, keys: Keys) -> tuple[int, int]:
    return JobQueue(r, keys).usage()


def find_request(r: redis.Redis, keys: Keys, request_id: str) -> Submitted | None:
    return JobQueue(r, keys).find_request(request_id)


def submit(r: redis.Redis, keys: Keys, jobs: Sequence[Job], blobs: Sequence[bytes | None], batch_id: str,
           request_id: str = "") -> Submitted:
    return JobQueue(r, keys).submit(jobs, blobs, batch_id, request_id)


def read_jobs(r: redis.Redis, keys: Keys, consumer: str, count: int, block_ms: int) -> list[Job]:
    return JobQueue(r, keys).read(consumer, count, block_ms)


def reclaim_stale(r: redis.Redis, keys: Keys, consumer: str, min_idle_ms: int, count: int) -> list[Job]:
    return JobQueue(r, keys).reclaim_stale(consumer, min_idle_ms, count)


def keep_alive(r: redis.Redis, keys: Keys, consumer: str, entry_ids: Sequence[str]) -> None:
    JobQueue(r, keys).keep_alive(consumer, entry_ids)


def record_transient_errors(r: redis.Redis, keys: Keys, errors: Sequence[tuple[Job, str]]) -> None:
    JobQueue(r, keys).record_transient_errors(errors)


def last_errors(r: redis.Redis, keys: Keys, jobs: Sequence[Job]) -> list[str | None]:
    return JobQueue(r, keys).last_errors(jobs)


def load_blobs(r: redis.Redis, keys: Keys, jobs: Sequence[Job]) -> list[bytes | None]:
    return JobQueue(r, keys).load_blobs(jobs)


def finish(r: redis.Redis, keys: Keys, outcomes: Iterable[tuple[Job, str | None]]) -> int:
    return JobQueue(r, keys).finish(outcomes)


def get_progress(r: redis.Redis, keys: Keys, batch_id: str = "") -> Progress | None:
    return JobQueue(r, keys).progress(batch_id)


def list_failures(r: redis.Redis, keys: Keys, batch_id: str = "", limit: int = 100) -> list[Failure]:
    return JobQueue(r, keys).failures(batch_id, limit)


def report_worker(r: redis.Redis, keys: Keys, info: WorkerInfo) -> None:
    JobQueue(r, keys).report_worker(info)


def remove_worker(r: redis.Redis, keys: Keys, name: str) -> None:
    JobQueue(r, keys).remove_worker(name)


def status(r: redis.Redis, keys: Keys) -> QueueStatus:
    return JobQueue(r, keys).status()


def take_over_dead(r: redis.Redis, keys: Keys, consumer: str, ttl_ms: int, count: int) -> list[Job]:
    return JobQueue(r, keys).take_over_dead(consumer, ttl_ms, count)


def release(r: redis.Redis, keys: Keys, consumer: str) -> int:
    return JobQueue(r, keys).release(consumer)


def release_orphans(r: redis.Redis, keys: Keys, consumer: str, held: Sequence[str], min_idle_ms: int,
                    count: int = 1000) -> list[str]:
    return JobQueue(r, keys).release_orphans(consumer, held, min_idle_ms, count)


def retry(r: redis.Redis, keys: Keys, failures: Sequence[Failure]) -> tuple[list[str], list[str]]:
    return JobQueue(r, keys).retry(failures)
