"""The Redis ingestion queue: every key name, the job format, submission, delivery and completion.

Layout (all keys share one hash tag, so they live in one Redis Cluster slot and Lua can touch them):
  {prefix}:jobs           stream of image jobs, consumed by the consumer group "encoders"
  {prefix}:blob:<uid>     inline image bytes of one queued job, deleted when the job is done
  {prefix}:progress       hash: submitted / indexed / failed totals
  {prefix}:batch:<id>     hash: submitted / indexed / failed of one submission batch (expires)
  {prefix}:failures       stream of failed images with their reasons (capped)

Completion is exactly-once for the counters even though delivery is at-least-once: one Lua script
XACKs the entry and bumps the counters only when the XACK really removed it from the pending list.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import redis

__all__ = [
    "GROUP",
    "Failure",
    "Job",
    "Keys",
    "Progress",
    "QueueError",
    "connect",
    "ensure_group",
    "finish",
    "get_progress",
    "list_failures",
    "read_jobs",
    "reclaim_stale",
    "submit",
]

GROUP = "encoders"
BATCH_TTL_S = 7 * 24 * 3600
FAILURES_MAXLEN = 100_000
INDEXED = "indexed"
FAILED = "failed"


class QueueError(Exception):
    """Redis could not be reached or answered with an error."""


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
    """An image that could not be indexed."""

    id: str
    uri: str
    reason: str
    batch_id: str
    failed_at_ms: int


_FINISH = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[5])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
if ARGV[3] == 'failed' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*',
             'id', ARGV[5], 'uri', ARGV[6], 'reason', ARGV[7], 'batch', ARGV[8])
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


def submit(
    r: redis.Redis, keys: Keys, jobs: Sequence[Job], blobs: Sequence[bytes | None], batch_id: str
) -> None:
    """Queues jobs atomically (all or none), storing inline bytes under their own keys."""
    pipe = r.pipeline(transaction=True)
    for job, blob in zip(jobs, blobs, strict=True):
        if blob is not None:
            pipe.set(keys.blob(job.uid), blob)
        pipe.xadd(keys.jobs, job.to_fields())
    pipe.hincrby(keys.progress, "submitted", len(jobs))
    pipe.hincrby(keys.batch(batch_id), "submitted", len(jobs))
    pipe.expire(keys.batch(batch_id), BATCH_TTL_S)
    pipe.execute()


def read_jobs(r: redis.Redis, keys: Keys, consumer: str, count: int, block_ms: int) -> list[Job]:
    """Delivers up to `count` new jobs to `consumer` (they stay pending until `finish`)."""
    reply = r.xreadgroup(GROUP, consumer, {keys.jobs: ">"}, count=count, block=block_ms)
    return [Job.from_entry(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]


def reclaim_stale(r: redis.Redis, keys: Keys, consumer: str, min_idle_ms: int, count: int) -> list[Job]:
    """Takes over jobs that another consumer has held longer than `min_idle_ms` (a crashed worker's)."""
    reply = r.xautoclaim(keys.jobs, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count)
    return [Job.from_entry(entry_id, fields) for entry_id, fields in reply[1] if fields]


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
    """Marks jobs done: (job, None) as indexed, (job, reason) as failed. Returns how many were still pending."""
    script = r.register_script(_FINISH)
    pipe = r.pipeline(transaction=False)
    for job, reason in outcomes:
        outcome = INDEXED if reason is None else FAILED
        script(
            keys=[keys.jobs, keys.progress, keys.batch(job.batch_id), keys.failures, keys.blob(job.uid)],
            args=[GROUP, job.entry_id, outcome, FAILURES_MAXLEN, job.id, job.uri, reason or "", job.batch_id],
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
            found.append(
                Failure(
                    id=fields.get("id", ""),
                    uri=fields.get("uri", ""),
                    reason=fields.get("reason", ""),
                    batch_id=fields.get("batch", ""),
                    failed_at_ms=int(_text(entry_id).split("-")[0]),
                )
            )
            if len(found) >= limit:
                break
        last = entries[-1][0]
    return found


def now_ms() -> int:
    return int(time.time() * 1000)
