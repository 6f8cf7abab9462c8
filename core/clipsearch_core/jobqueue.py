"""The Redis ingestion queue: every key name, the job format, submission, delivery and completion.

Layout (all keys share one hash tag, so they live in one Redis Cluster slot and Lua can touch them):
  {prefix}:jobs           stream of image jobs, consumed by the consumer group "encoders"
  {prefix}:blob:<uid>     inline image bytes of one queued job, deleted when the job is done
  {prefix}:progress       hash: submitted / indexed / failed totals
  {prefix}:batch:<id>     hash: submitted / indexed / failed of one submission batch (expires)
  {prefix}:failures       dead-letter stream: failed jobs with their reason and attempts (capped)
  {prefix}:queued-bytes   inline bytes held by jobs not yet done (for backpressure)
  {prefix}:last-error     hash uid -> last transient error of a job that will be retried
  {prefix}:workers        hash consumer -> JSON heartbeat of each encoder worker (for status)

Completion is exactly-once for the counters even though delivery is at-least-once: one Lua script
XACKs the entry and bumps the counters only when the XACK really removed it from the pending list.
Finished entries are XDELed (the stream stays bounded); inline bytes are deleted when a job is
indexed and kept for FAILED_BLOB_TTL_S when it failed, so that it can be retried.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import redis

__all__ = [
    "GROUP",
    "Failure",
    "Job",
    "Keys",
    "Progress",
    "connect",
    "ensure_group",
    "finish",
    "get_progress",
    "list_failures",
    "read_jobs",
    "keep_alive",
    "last_errors",
    "reclaim_stale",
    "record_transient_error",
    "retry",
    "submit",
    "usage",
    "QueueStatus",
    "WorkerInfo",
    "remove_worker",
    "report_worker",
    "status",
]

GROUP = "encoders"
BATCH_TTL_S = 7 * 24 * 3600
FAILED_BLOB_TTL_S = 7 * 24 * 3600
FAILURES_MAXLEN = 100_000
INDEXED = "indexed"
FAILED = "failed"


@dataclass(frozen=True)
class Keys:
    """Every Redis key name clipsearch uses, derived from one prefix."""

    prefix: str = "clipsearch"

    @property
    def _tag(self) -> str:
        return "{" + self.prefix + "}"

    @property
    def jobs(self) -> str:
        return f"{self._tag}:jobs"

    @property
    def progress(self) -> str:
        return f"{self._tag}:progress"

    @property
    def failures(self) -> str:
        return f"{self._tag}:failures"

    @property
    def queued_bytes(self) -> str:
        return f"{self._tag}:queued-bytes"

    @property
    def workers(self) -> str:
        return f"{self._tag}:workers"

    @property
    def last_error(self) -> str:
        return f"{self._tag}:last-error"

    def blob(self, uid: str) -> str:
        return f"{self._tag}:blob:{uid}"

    def batch(self, batch_id: str) -> str:
        return f"{self._tag}:batch:{batch_id}"


@dataclass(frozen=True)
class Job:
    """One image to encode. `uid` is unique per submission; `id` is the image id (the upsert key)."""

    id: str
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    batch_id: str = ""
    has_blob: bool = False
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    entry_id: str = ""  # the stream entry id, set when read from Redis
    attempts: int = 1  # deliveries so far, set when reclaimed

    def to_fields(self) -> dict[str, str]:
        return {
            "uid": self.uid,
            "id": self.id,
            "uri": self.uri,
            "batch": self.batch_id,
            "meta": json.dumps(self.metadata, separators=(",", ":")),
            "blob": "1" if self.has_blob else "0",
        }

    @classmethod
    def from_entry(cls, entry_id: bytes | str, raw: dict[bytes, bytes]) -> "Job":
        fields = _decoded(raw)
        return cls(
            id=fields.get("id", ""),
            uri=fields.get("uri", ""),
            metadata=json.loads(fields.get("meta") or "{}"),
            batch_id=fields.get("batch", ""),
            has_blob=fields.get("blob") == "1",
            uid=fields.get("uid", ""),
            entry_id=_text(entry_id),
        )


@dataclass(frozen=True)
class Progress:
    """Ingestion counts; pending = submitted - indexed - failed."""

    submitted: int = 0
    indexed: int = 0
    failed: int = 0

    @property
    def pending(self) -> int:
        return max(0, self.submitted - self.indexed - self.failed)


@dataclass(frozen=True)
class Failure:
    """An image that could not be indexed (an entry of the dead-letter stream)."""

    id: str
    uri: str
    reason: str
    batch_id: str
    failed_at_ms: int
    attempts: int
    entry_id: str
    job: Job


# KEYS: jobs, progress, batch, failures, blob, queued-bytes, last-error
# ARGV: group, entry id, outcome, failures maxlen, blob ttl, uid, reason, attempts, job fields (k, v, ...)
_FINISH = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DECRBY', KEYS[6], redis.call('STRLEN', KEYS[5]))
redis.call('HDEL', KEYS[7], ARGV[6])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
if ARGV[3] == 'failed' then
  redis.call('EXPIRE', KEYS[5], ARGV[5])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'reason', ARGV[7], 'attempts', ARGV[8], unpack(ARGV, 9))
else
  redis.call('DEL', KEYS[5])
end
return 1
"""

# KEYS: failures, jobs, progress, batch, blob, queued-bytes
# ARGV: failure entry id, has blob ("1"/"0"), job fields (k, v, ...)
_RETRY = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[5]) == 0 then
  return -1
end
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('PERSIST', KEYS[5])
redis.call('INCRBY', KEYS[6], redis.call('STRLEN', KEYS[5]))
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('HINCRBY', KEYS[3], 'failed', -1)
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'failed', -1)
end
return 1
"""


def connect(url: str) -> redis.Redis:
    """A Redis client for `url` (redis://host:port/db) with bounded timeouts. Replies are bytes
    (image blobs are binary); the functions here decode what they return."""
    return redis.Redis.from_url(
        url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
    )


def ensure_group(r: redis.Redis, keys: Keys) -> None:
    """Creates the jobs stream and consumer group if missing (from the stream's start: no job is skipped)."""
    try:
        r.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def usage(r: redis.Redis, keys: Keys) -> tuple[int, int]:
    """(jobs not yet done, inline bytes they hold)."""
    pipe = r.pipeline(transaction=False)
    pipe.xlen(keys.jobs)
    pipe.get(keys.queued_bytes)
    jobs, size = pipe.execute()
    return int(jobs), int(size or 0)


def submit(
    r: redis.Redis, keys: Keys, jobs: Sequence[Job], blobs: Sequence[bytes | None], batch_id: str
) -> None:
    """Queues jobs atomically (all or none), storing inline bytes under their own keys."""
    pipe = r.pipeline(transaction=True)
    for job, blob in zip(jobs, blobs, strict=True):
        if blob is not None:
            pipe.set(keys.blob(job.uid), blob)
        pipe.xadd(keys.jobs, job.to_fields())
    pipe.incrby(keys.queued_bytes, sum(len(b) for b in blobs if b))
    pipe.hincrby(keys.progress, "submitted", len(jobs))
    pipe.hincrby(keys.batch(batch_id), "submitted", len(jobs))
    pipe.expire(keys.batch(batch_id), BATCH_TTL_S)
    pipe.execute()


def read_jobs(r: redis.Redis, keys: Keys, consumer: str, count: int, block_ms: int) -> list[Job]:
    """Delivers up to `count` new jobs to `consumer` (they stay pending until `finish`)."""
    reply = r.xreadgroup(GROUP, consumer, {keys.jobs: ">"}, count=count, block=block_ms)
    return [Job.from_entry(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]


def reclaim_stale(r: redis.Redis, keys: Keys, consumer: str, min_idle_ms: int, count: int) -> list[Job]:
    """Takes over jobs that another consumer has held longer than `min_idle_ms` (a crashed worker's,
    or this worker's own transient failures), with their delivery counts."""
    reply = r.xautoclaim(keys.jobs, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count)
    jobs = [Job.from_entry(entry_id, fields) for entry_id, fields in reply[1] if fields]
    if not jobs:
        return []
    pipe = r.pipeline(transaction=False)
    for job in jobs:
        pipe.xpending_range(keys.jobs, GROUP, min=job.entry_id, max=job.entry_id, count=1)
    counts = [int(rows[0]["times_delivered"]) if rows else 1 for rows in pipe.execute()]
    return [replace(job, attempts=n) for job, n in zip(jobs, counts)]


def keep_alive(r: redis.Redis, keys: Keys, consumer: str, entry_ids: Sequence[str]) -> None:
    """Resets the idle time of jobs this consumer is working on, so nobody reclaims them (a heartbeat).
    JUSTID leaves the delivery counts alone."""
    if entry_ids:
        r.xclaim(keys.jobs, GROUP, consumer, min_idle_time=0, message_ids=list(entry_ids), justid=True)


def record_transient_error(r: redis.Redis, keys: Keys, job: Job, reason: str) -> None:
    """Remembers why a job will be retried (reported if it finally dead-letters)."""
    r.hset(keys.last_error, job.uid, reason)


def last_errors(r: redis.Redis, keys: Keys, jobs: Sequence[Job]) -> list[str | None]:
    if not jobs:
        return []
    return [None if v is None else _text(v) for v in r.hmget(keys.last_error, [job.uid for job in jobs])]


def load_blobs(r: redis.Redis, keys: Keys, jobs: Sequence[Job]) -> list[bytes | None]:
    """The inline bytes of each job (None for jobs that read their image from a uri, or whose bytes are gone)."""
    wanted = [job for job in jobs if job.has_blob]
    raw = r.execute_command("MGET", *[keys.blob(job.uid) for job in wanted]) if wanted else []
    by_uid = dict(zip((job.uid for job in wanted), raw))
    return [by_uid.get(job.uid) for job in jobs]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def finish(r: redis.Redis, keys: Keys, outcomes: Iterable[tuple[Job, str | None]]) -> int:
    """Marks jobs done: (job, None) as indexed, (job, reason) as failed (dead-lettered).
    Returns how many were still pending (the others were already finished by someone)."""
    script = r.register_script(_FINISH)
    pipe = r.pipeline(transaction=False)
    for job, reason in outcomes:
        outcome = INDEXED if reason is None else FAILED
        fields = [item for pair in job.to_fields().items() for item in pair]
        script(
            keys=[keys.jobs, keys.progress, keys.batch(job.batch_id), keys.failures, keys.blob(job.uid),
                  keys.queued_bytes, keys.last_error],
            args=[GROUP, job.entry_id, outcome, FAILURES_MAXLEN, FAILED_BLOB_TTL_S, job.uid, reason or "",
                  job.attempts, *fields],
            client=pipe,
        )
    return sum(int(x) for x in pipe.execute())


def get_progress(r: redis.Redis, keys: Keys, batch_id: str = "") -> Progress | None:
    """Counts for a batch (None if unknown or expired) or, with no batch id, for the whole service."""
    values = _decoded(r.hgetall(keys.batch(batch_id) if batch_id else keys.progress))
    if batch_id and not values:
        return None
    return Progress(*(int(values.get(name, 0)) for name in ("submitted", "indexed", "failed")))


def list_failures(r: redis.Redis, keys: Keys, batch_id: str = "", limit: int = 100) -> list[Failure]:
    """The newest failures, optionally of one batch only."""
    found: list[Failure] = []
    last = "+"
    while len(found) < limit:
        entries = r.xrevrange(keys.failures, max=last, count=1000)
        if last != "+":
            entries = entries[1:]
        if not entries:
            break
        for entry_id, raw in entries:
            fields = _decoded(raw)
            if batch_id and fields.get("batch") != batch_id:
                continue
            job = Job.from_entry("", raw)
            found.append(
                Failure(
                    id=job.id,
                    uri=job.uri,
                    reason=fields.get("reason", ""),
                    batch_id=job.batch_id,
                    failed_at_ms=int(_text(entry_id).split("-")[0]),
                    attempts=int(fields.get("attempts", 1)),
                    entry_id=_text(entry_id),
                    job=job,
                )
            )
            if len(found) >= limit:
                break
        last = entries[-1][0]
    return found


WORKER_ALIVE_S = 30.0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker last reported about itself."""

    name: str
    last_seen_ms: int
    processed: int = 0
    device: str = ""
    model: str = ""

    @property
    def alive(self) -> bool:
        return now_ms() - self.last_seen_ms < WORKER_ALIVE_S * 1000


@dataclass(frozen=True)
class QueueStatus:
    """jobs: not finished; pending: delivered to a worker, not finished; lag: not yet delivered."""

    jobs: int
    pending: int
    lag: int
    queued_bytes: int
    workers: list[WorkerInfo]


def now_ms() -> int:
    return int(time.time() * 1000)


def report_worker(r: redis.Redis, keys: Keys, info: WorkerInfo) -> None:
    r.hset(keys.workers, info.name, json.dumps({**info.__dict__, "last_seen_ms": now_ms()}))


def remove_worker(r: redis.Redis, keys: Keys, name: str) -> None:
    r.hdel(keys.workers, name)


def status(r: redis.Redis, keys: Keys) -> QueueStatus:
    """Queue depth, in-flight and undelivered jobs, and the workers (stale entries are pruned)."""
    pipe = r.pipeline(transaction=False)
    pipe.xlen(keys.jobs)
    pipe.xpending(keys.jobs, GROUP)
    pipe.get(keys.queued_bytes)
    pipe.hgetall(keys.workers)
    try:
        jobs, pending, size, workers = pipe.execute()
    except redis.ResponseError:  # no stream/group yet
        return QueueStatus(0, 0, 0, 0, [])
    infos = [WorkerInfo(**json.loads(v)) for v in workers.values()]
    dead = [w.name for w in infos if now_ms() - w.last_seen_ms > 10 * WORKER_ALIVE_S * 1000]
    if dead:
        r.hdel(keys.workers, *dead)
    in_flight = int(pending["pending"]) if pending else 0
    return QueueStatus(int(jobs), in_flight, max(0, int(jobs) - in_flight), int(size or 0),
                       sorted((w for w in infos if w.name not in dead), key=lambda w: w.name))


def retry(r: redis.Redis, keys: Keys, failures: Sequence[Failure]) -> tuple[list[str], list[str]]:
    """Queues failed jobs again; returns (retried ids, ids whose inline bytes have expired)."""
    script = r.register_script(_RETRY)
    pipe = r.pipeline(transaction=False)
    for f in failures:
        fields = [item for pair in f.job.to_fields().items() for item in pair]
        script(
            keys=[keys.failures, keys.jobs, keys.progress, keys.batch(f.batch_id), keys.blob(f.job.uid),
                  keys.queued_bytes],
            args=[f.entry_id, "1" if f.job.has_blob else "0", *fields],
            client=pipe,
        )
    results = pipe.execute()
    retried = [f.id for f, res in zip(failures, results) if int(res) == 1]
    expired = [f.id for f, res in zip(failures, results) if int(res) == -1]
    return retried, expired
