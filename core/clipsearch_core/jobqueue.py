"""The Redis ingestion queue: every key name, the job format, submission, delivery and completion.

Layout (all keys share one hash tag, so they live in one Redis Cluster slot and Lua can touch them):
  {prefix}:jobs           stream of image jobs, consumed by the consumer group "encoders"
  {prefix}:blob:<uid>     inline image bytes of one queued job, deleted when the job is done
  {prefix}:progress       hash: submitted / indexed / failed totals
  {prefix}:batch:<id>     hash: submitted / indexed / failed of one submission batch (expires)
  {prefix}:failures       dead-letter stream: failed jobs with their reason and attempts (capped)
  {prefix}:queued-bytes   inline bytes held by jobs not yet done (for backpressure)
  {prefix}:last-error     hash uid -> last transient error of a job that will be retried
  {prefix}:workers        hash consumer -> JSON heartbeat of each encoder worker (liveness and status)
  {prefix}:request:<id>   the reply of one SubmitImages call, by the caller's request id (expires)

Completion is exactly-once for the counters even though delivery is at-least-once: one Lua script
XACKs the entry and bumps the counters only when the XACK really removed it from the pending list.
Finished entries are XDELed (the stream stays bounded); inline bytes are deleted when a job is
indexed and kept for FAILED_BLOB_TTL_S when it failed, so that it can be retried.

Recovery of jobs held by a worker that is gone (all without waiting for the visibility timeout, except
the last):
  - a worker whose heartbeat (report_worker, every few seconds from its own thread) is older than the
    worker TTL is dead: live workers move its pending jobs to themselves and remove it from the group
    (take_over_dead, one Lua script, so two live workers never take the same job);
  - a worker that stops (SIGTERM, or a fatal error) gives its unfinished jobs back to the parking
    consumer PARKING and leaves the group (release); live workers take them over at once;
  - consumers that never reported a heartbeat: XAUTOCLAIM after the visibility timeout (reclaim_stale).
Jobs that a live worker holds in Redis but no longer works on (orphans) are given back to PARKING by the
worker itself on each heartbeat (release_orphans): its heartbeat keeps it alive, so nobody else would take
them before the visibility timeout. They come from Redis going away or restarting under a worker: an
acknowledgement (finish) that failed while Redis was unreachable (the worker moves on, the job stays
pending for it), a read whose reply was lost, or a Redis restarted from an append-only file that lost its
last writes (everysec: up to about a second), which brings back, pending, jobs the worker had finished.
Redoing them is safe: upserts are idempotent and the XACK guard counts each job once. A lost second
cannot make the counters wrong either: the finish script's XACK, XDEL and counter increments are one
transaction in the AOF, kept or lost together, so a job whose count was lost is pending again and is
counted when it is redone. (A submission lost in that second is lost whole, its `submitted` count
included; if a worker had already indexed it, the server has the image and the counters never knew it.)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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
    "connection_id",
    "interrupt_read",
    "keep_alive",
    "last_errors",
    "reclaim_stale",
    "record_transient_error",
    "record_transient_errors",
    "retry",
    "find_request",
    "submit",
    "Submitted",
    "usage",
    "PARKING",
    "QueueStatus",
    "WorkerInfo",
    "release",
    "release_orphans",
    "take_over_dead",
    "remove_worker",
    "report_worker",
    "status",
]

GROUP = "encoders"
BATCH_TTL_S = 7 * 24 * 3600
REQUEST_TTL_S = 24 * 3600  # how long a SubmitImages request id is remembered (retries within it land once)
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

    def request(self, request_id: str) -> str:
        return f"{self._tag}:request:{request_id}"


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
    # Typed fields as JSON: an object mapping each key to the proto3 JSON of a clipsearch.v1.Value
    # (e.g. {"n": {"int_value": "3"}}); "" = none. Passed through to UpsertVectors unchanged.
    fields_json: str = ""

    def to_fields(self) -> dict[str, str]:
        return {
            "uid": self.uid,
            "id": self.id,
            "uri": self.uri,
            "batch": self.batch_id,
            "meta": json.dumps(self.metadata, separators=(",", ":")),
            "blob": "1" if self.has_blob else "0",
            "fields": self.fields_json,
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
            fields_json=fields.get("fields", ""),
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


# Every script first names its KEYS and ARGV slots and uses only those names; each has one Python
# helper below (`_run_finish`, `_run_retry`, ...) taking named arguments, the only place that orders them.

# Finishes a batch of jobs in one call: per job, XACK; only if that removed it from the pending list
# (exactly-once counts): XDEL, counters, and delete its bytes (indexed) or dead-letter it (failed).
# KEYS: 5 shared keys, then 2 per job (its batch hash, its blob). ARGV: 3 shared values, then per job
# a record of JOB_SLOTS values followed by its dead-letter fields (field_count values, k, v, ...).
_FINISH = """
local stream = KEYS[1]
local progress = KEYS[2]
local failures = KEYS[3]
local queued_bytes = KEYS[4]
local last_error = KEYS[5]
local first_job_key = 6  -- KEYS[6..]: per job, its batch hash then its blob
local group = ARGV[1]
local failures_maxlen = ARGV[2]
local blob_ttl_s = ARGV[3]
local arg = 4  -- ARGV[4..]: per job, entry_id, outcome, uid, reason, attempts, field_count, fields...

local finished = 0
local key = first_job_key
while arg <= #ARGV do
  local batch = KEYS[key]
  local blob = KEYS[key + 1]
  local entry_id = ARGV[arg]
  local outcome = ARGV[arg + 1]
  local uid = ARGV[arg + 2]
  local reason = ARGV[arg + 3]
  local attempts = ARGV[arg + 4]
  local field_count = tonumber(ARGV[arg + 5])
  local first_field = arg + 6
  key = key + 2
  arg = first_field + field_count
  if redis.call('XACK', stream, group, entry_id) == 1 then  -- 0: someone finished it already: count nothing
    redis.call('XDEL', stream, entry_id)
    redis.call('DECRBY', queued_bytes, redis.call('STRLEN', blob))
    redis.call('HDEL', last_error, uid)
    redis.call('HINCRBY', progress, outcome, 1)
    if redis.call('EXISTS', batch) == 1 then
      redis.call('HINCRBY', batch, outcome, 1)
    end
    if outcome == 'failed' then
      redis.call('EXPIRE', blob, blob_ttl_s)
      redis.call('XADD', failures, 'MAXLEN', '~', failures_maxlen, '*', 'reason', reason, 'attempts', attempts,
                 unpack(ARGV, first_field, arg - 1))
    else
      redis.call('DEL', blob)
    end
    finished = finished + 1
  end
end
return finished
"""

_RETRY = """
local failures = KEYS[1]
local stream = KEYS[2]
local progress = KEYS[3]
local batch = KEYS[4]
local blob = KEYS[5]
local queued_bytes = KEYS[6]
local failure_id = ARGV[1]
local has_blob = ARGV[2]
local first_field = 3  -- ARGV[3..]: the job's fields (k, v, ...)

if has_blob == '1' and redis.call('EXISTS', blob) == 0 then
  return -1
end
if redis.call('XDEL', failures, failure_id) == 0 then
  return 0
end
redis.call('PERSIST', blob)
redis.call('INCRBY', queued_bytes, redis.call('STRLEN', blob))
redis.call('XADD', stream, '*', unpack(ARGV, first_field))
redis.call('HINCRBY', progress, 'failed', -1)
if redis.call('EXISTS', batch) == 1 then
  redis.call('HINCRBY', batch, 'failed', -1)
end
return 1
"""

# Moves a dead consumer's pending jobs to `taker`, then (when none are left) removes the dead consumer
# from the group and its heartbeat record. Does nothing if the record changed since the caller judged
# it dead (the worker beat again). Returns {entry id, fields, delivery count} per job taken.
_TAKE_OVER = """
local stream = KEYS[1]
local workers = KEYS[2]
local group = ARGV[1]
local dead = ARGV[2]
local taker = ARGV[3]
local seen_record = ARGV[4]
local count = tonumber(ARGV[5])
local is_delivery = ARGV[6] == '1'

local record = redis.call('HGET', workers, dead)
if (record or '') ~= seen_record then
  return {}
end
local rows = redis.call('XPENDING', stream, group, '-', '+', count, dead)
local taken = {}
for _, row in ipairs(rows) do
  local entry_id = row[1]
  local deliveries = tonumber(row[4])
  if is_delivery then
    deliveries = deliveries + 1
  end
  local got = redis.call('XCLAIM', stream, group, taker, 0, entry_id, 'RETRYCOUNT', deliveries)
  if #got == 1 and got[1][2] then
    taken[#taken + 1] = {entry_id, got[1][2], deliveries}
  end
end
if #rows < count then
  redis.call('XGROUP', 'DELCONSUMER', stream, group, dead)
  redis.call('HDEL', workers, dead)
end
return taken
"""

# Hands every pending job of `consumer` to the parking consumer (delivery counts unchanged, idle time
# set high so that any reclaim takes them), then removes `consumer` from the group. Returns how many.
_RELEASE = """
local stream = KEYS[1]
local group = ARGV[1]
local consumer = ARGV[2]
local parking = ARGV[3]
local idle_ms = ARGV[4]

local released = 0
for _ = 1, 1000 do
  local rows = redis.call('XPENDING', stream, group, '-', '+', 100, consumer)
  if #rows == 0 then
    break
  end
  local claim = {'XCLAIM', stream, group, parking, '0'}
  for _, row in ipairs(rows) do
    claim[#claim + 1] = row[1]
  end
  claim[#claim + 1] = 'IDLE'
  claim[#claim + 1] = idle_ms
  claim[#claim + 1] = 'JUSTID'
  released = released + #redis.call(unpack(claim))
end
redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
return released
"""


# Hands `consumer`'s pending jobs idle for at least `min_idle_ms` that are not among `held` (the entry ids
# the worker is working on) to the parking consumer, as _RELEASE does (delivery counts unchanged, idle time
# set high). One script, so that a job read or claimed meanwhile (idle reset) is not given away. No stream
# or group (a Redis that came back empty): nothing is held. Returns the entry ids released.
_RELEASE_ORPHANS = """
local stream = KEYS[1]
local group = ARGV[1]
local consumer = ARGV[2]
local parking = ARGV[3]
local min_idle_ms = ARGV[4]
local idle_ms = ARGV[5]
local count = ARGV[6]
local first_held = 7  -- ARGV[7..]: the entry ids the worker is working on

local rows = redis.pcall('XPENDING', stream, group, 'IDLE', min_idle_ms, '-', '+', count, consumer)
if rows['err'] then
  return {}
end
local held = {}
for i = first_held, #ARGV do
  held[ARGV[i]] = true
end
local claim = {'XCLAIM', stream, group, parking, '0'}
for _, row in ipairs(rows) do
  if not held[row[1]] then
    claim[#claim + 1] = row[1]
  end
end
if #claim == 5 then
  return {}
end
claim[#claim + 1] = 'IDLE'
claim[#claim + 1] = idle_ms
claim[#claim + 1] = 'JUSTID'
return redis.call(unpack(claim))
"""


def connect(url: str, *, single_connection: bool = False) -> redis.Redis:
    """A Redis client for `url` (redis://host:port/db) with bounded timeouts. Replies are bytes
    (image blobs are binary); the functions here decode what they return.

    `single_connection`: a client for one thread (a worker's reader), whose commands all go over one
    connection, so that the id `connection_id` gives is the one its blocking reads use (for
    `interrupt_read`). It is connected at first use, and a dropped connection raises instead of being
    replaced inside the call, which would leave the id stale (no retries, said explicitly: `from_url`
    has none by default today, `redis.Redis()` has ten): the caller asks the id again after an error."""
    one = {"max_connections": 1, "retry": Retry(NoBackoff(), 0)} if single_connection else {}
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30, **one)


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


@dataclass(frozen=True)
class Submitted:
    """What one submission queued: its batch id and image ids (remembered per request id)."""

    batch_id: str
    ids: list[str]


def find_request(r: redis.Redis, keys: Keys, request_id: str) -> Submitted | None:
    """The result of an earlier submission with this request id, if it is still remembered."""
    raw = r.get(keys.request(request_id)) if request_id else None
    if raw is None:
        return None
    data = json.loads(raw)
    return Submitted(data["batch_id"], list(data["ids"]))


def submit(
    r: redis.Redis, keys: Keys, jobs: Sequence[Job], blobs: Sequence[bytes | None], batch_id: str,
    request_id: str = "",
) -> Submitted:
    """Queues jobs atomically (all or none), storing inline bytes under their own keys.

    With a request id, the result is recorded in the same transaction (for REQUEST_TTL_S), and a
    request id already recorded queues nothing and returns the first call's result: a retried call
    lands once. WATCH makes two concurrent calls with one request id queue once."""
    result = Submitted(batch_id, [job.id for job in jobs])
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                if request_id:
                    pipe.watch(keys.request(request_id))
                    earlier = find_request(pipe, keys, request_id)
                    if earlier is not None:
                        return earlier
                    pipe.multi()
                    pipe.set(keys.request(request_id), json.dumps(result.__dict__), ex=REQUEST_TTL_S)
                for job, blob in zip(jobs, blobs, strict=True):
                    if blob is not None:
                        pipe.set(keys.blob(job.uid), blob)
                    pipe.xadd(keys.jobs, job.to_fields())
                pipe.incrby(keys.queued_bytes, sum(len(b) for b in blobs if b))
                pipe.hincrby(keys.progress, "submitted", len(jobs))
                pipe.hincrby(keys.batch(batch_id), "submitted", len(jobs))
                pipe.expire(keys.batch(batch_id), BATCH_TTL_S)
                pipe.execute()
                return result
            except redis.WatchError:
                continue  # the same request id was recorded meanwhile: return that result


def read_jobs(r: redis.Redis, keys: Keys, consumer: str, count: int, block_ms: int) -> list[Job]:
    """Delivers up to `count` new jobs to `consumer` (they stay pending until `finish`), waiting up to
    `block_ms` for the first one; an `interrupt_read` of the connection ends the wait at once."""
    reply = r.xreadgroup(GROUP, consumer, {keys.jobs: ">"}, count=count, block=block_ms)
    return [Job.from_entry(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]


def connection_id(r: redis.Redis) -> int:
    """The server's id of the connection of `r` (a `connect(..., single_connection=True)` client)."""
    return int(r.client_id())


def interrupt_read(r: redis.Redis, reader_id: int) -> bool:
    """Ends the blocking `read_jobs` of connection `reader_id` now, as if its wait had run out (no jobs
    delivered); so that a stopping worker does not wait out `block_ms`. False if it was not blocked."""
    return bool(r.client_unblock(reader_id))


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


def record_transient_errors(r: redis.Redis, keys: Keys, errors: Sequence[tuple[Job, str]]) -> None:
    """`record_transient_error` for many jobs in one command."""
    if errors:
        r.hset(keys.last_error, mapping={job.uid: reason for job, reason in errors})


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
    Returns how many were still pending (the others were already finished by someone).
    One script call per FINISH_CHUNK jobs."""
    outcomes = list(outcomes)
    if not outcomes:
        return 0
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(outcomes), FINISH_CHUNK):
        _run_finish(pipe, keys, outcomes[start:start + FINISH_CHUNK])
    return sum(int(x) for x in pipe.execute())


FINISH_CHUNK = 256  # jobs per _FINISH call (bounds the time one script blocks Redis)


def _run_finish(pipe: "redis.client.Pipeline", keys: Keys, outcomes: Sequence[tuple[Job, str | None]]) -> None:
    """Queues _FINISH for these jobs on `pipe` (the one place that orders its KEYS and ARGV)."""
    job_keys: list[str] = []
    args: list[object] = [GROUP, FAILURES_MAXLEN, FAILED_BLOB_TTL_S]
    for job, reason in outcomes:
        job_keys += [keys.batch(job.batch_id), keys.blob(job.uid)]
        fields = _flat_fields(job) if reason is not None else []  # only failures are copied to the dead letters
        args += [job.entry_id, INDEXED if reason is None else FAILED, job.uid, reason or "", job.attempts,
                 len(fields), *fields]
    shared = [keys.jobs, keys.progress, keys.failures, keys.queued_bytes, keys.last_error]
    pipe.register_script(_FINISH)(keys=[*shared, *job_keys], args=args, client=pipe)


def _flat_fields(job: Job) -> list[str]:
    return [item for pair in job.to_fields().items() for item in pair]


def _run_retry(client: "redis.Redis | redis.client.Pipeline", keys: Keys, failure: "Failure") -> object:
    """Runs _RETRY for one dead-lettered job."""
    job = failure.job
    return client.register_script(_RETRY)(
        keys=[keys.failures, keys.jobs, keys.progress, keys.batch(failure.batch_id), keys.blob(job.uid),
              keys.queued_bytes],
        args=[failure.entry_id, "1" if job.has_blob else "0", *_flat_fields(job)],
        client=client,
    )


def _run_take_over(r: redis.Redis, keys: Keys, *, dead: str, taker: str, seen_record: bytes, count: int,
                   is_delivery: bool) -> list:
    """Runs _TAKE_OVER: up to `count` pending jobs of consumer `dead` become `taker`'s."""
    return r.register_script(_TAKE_OVER)(
        keys=[keys.jobs, keys.workers],
        args=[GROUP, dead, taker, seen_record, count, "1" if is_delivery else "0"],
    )


def _run_release(r: redis.Redis, keys: Keys, *, consumer: str, idle_ms: int) -> int:
    """Runs _RELEASE: every pending job of `consumer` goes to the parking consumer."""
    return int(r.register_script(_RELEASE)(keys=[keys.jobs], args=[GROUP, consumer, PARKING, idle_ms]))


def _run_release_orphans(r: redis.Redis, keys: Keys, *, consumer: str, held: Sequence[str], min_idle_ms: int,
                         idle_ms: int, count: int) -> list[str]:
    """Runs _RELEASE_ORPHANS: `consumer`'s idle pending jobs that are not in `held` go to the parking consumer."""
    released = r.register_script(_RELEASE_ORPHANS)(
        keys=[keys.jobs], args=[GROUP, consumer, PARKING, min_idle_ms, idle_ms, count, *held])
    return [_text(entry_id) for entry_id in released]


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
PARKING = "(released)"  # consumer holding jobs that a stopping worker gave back; taken over at once
RELEASED_IDLE_MS = 10 * 365 * 24 * 3600 * 1000  # idle time given to released jobs: any XAUTOCLAIM takes them


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

    @classmethod
    def from_json(cls, name: str, raw: bytes | str) -> "WorkerInfo":
        """Parses a heartbeat record tolerantly: unknown fields (from newer workers) are ignored, missing
        or malformed ones get defaults, so one odd record never breaks status or metrics."""
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}

        def number(key: str) -> int:
            try:
                return int(data.get(key, 0))
            except (TypeError, ValueError):
                return 0

        return cls(name=name, last_seen_ms=number("last_seen_ms"), processed=number("processed"),
                   device=str(data.get("device", "")), model=str(data.get("model", "")))


@dataclass(frozen=True)
class QueueStatus:
    """jobs: not finished; in_flight: delivered to a worker, not finished; lag: not yet delivered."""

    jobs: int
    in_flight: int
    lag: int
    queued_bytes: int
    workers: list[WorkerInfo]


def now_ms() -> int:
    return int(time.time() * 1000)


def redis_now_ms(r: redis.Redis) -> int:
    """Redis's clock in ms: heartbeats are written and judged with one clock, whatever the hosts' clocks say."""
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def report_worker(r: redis.Redis, keys: Keys, info: WorkerInfo) -> None:
    r.hset(keys.workers, info.name, json.dumps({**info.__dict__, "last_seen_ms": redis_now_ms(r)}))


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
    infos = [WorkerInfo.from_json(_text(k), v) for k, v in workers.items()]
    dead = [w.name for w in infos if now_ms() - w.last_seen_ms > 10 * WORKER_ALIVE_S * 1000]
    if dead:
        r.hdel(keys.workers, *dead)
    in_flight = int(pending["pending"]) if pending else 0
    return QueueStatus(int(jobs), in_flight, max(0, int(jobs) - in_flight), int(size or 0),
                       sorted((w for w in infos if w.name not in dead), key=lambda w: w.name))


def take_over_dead(r: redis.Redis, keys: Keys, consumer: str, ttl_ms: int, count: int) -> list[Job]:
    """Takes over (for `consumer`) the pending jobs of consumers whose heartbeat is older than `ttl_ms`,
    and of the parking consumer (jobs released by stopping workers); a dead consumer is removed from the
    group once it holds nothing. Consumers that never reported a heartbeat are left to `reclaim_stale`.
    A job taken from a dead worker counts as a new delivery; a released one does not."""
    pipe = r.pipeline(transaction=False)
    pipe.xinfo_consumers(keys.jobs, GROUP)
    pipe.hgetall(keys.workers)
    consumers, records = pipe.execute()
    records = {_text(k): v for k, v in records.items()}
    now = redis_now_ms(r)
    taken: list[Job] = []
    for info in consumers:
        name = _text(info["name"])
        if name == consumer or len(taken) >= count:
            continue
        if name == PARKING:
            seen, is_delivery = b"", False
        elif name in records and now - WorkerInfo.from_json(name, records[name]).last_seen_ms > ttl_ms:
            seen, is_delivery = records[name], True
        else:
            continue  # alive, or never reported (the visibility timeout covers those)
        rows = _run_take_over(r, keys, dead=name, taker=consumer, seen_record=seen, count=count - len(taken),
                              is_delivery=is_delivery)
        taken.extend(
            replace(Job.from_entry(entry_id, dict(zip(fields[::2], fields[1::2]))), attempts=int(deliveries))
            for entry_id, fields, deliveries in rows
        )
    return taken


def release(r: redis.Redis, keys: Keys, consumer: str) -> int:
    """Gives back every job `consumer` holds (to the parking consumer, delivery counts unchanged) and
    removes `consumer` from the group, so that live workers take the jobs at once. For a worker that
    stops without finishing what it took. Returns how many jobs were released."""
    return _run_release(r, keys, consumer=consumer, idle_ms=RELEASED_IDLE_MS)


def release_orphans(r: redis.Redis, keys: Keys, consumer: str, held: Sequence[str], min_idle_ms: int,
                    count: int = 1000) -> list[str]:
    """Gives back (to the parking consumer, like `release`) the jobs that Redis says `consumer` holds but
    that are not among `held`, the entry ids the worker is really working on, once idle for `min_idle_ms`
    (a job just read or claimed is not yet in `held`: its idle time is near 0). Such orphans are left by
    a finish that failed while Redis was unreachable, a read whose reply was lost, or a Redis restarted
    from an append-only file that lost its last acknowledgements. Live workers, this one included, take
    them over at once (`take_over_dead`). Returns the entry ids released (at most `count` per call)."""
    return _run_release_orphans(r, keys, consumer=consumer, held=held, min_idle_ms=min_idle_ms,
                                idle_ms=RELEASED_IDLE_MS, count=count)


def retry(r: redis.Redis, keys: Keys, failures: Sequence[Failure]) -> tuple[list[str], list[str]]:
    """Queues failed jobs again; returns (retried ids, ids whose inline bytes have expired)."""
    pipe = r.pipeline(transaction=False)
    for f in failures:
        _run_retry(pipe, keys, f)
    results = pipe.execute()
    retried = [f.id for f, res in zip(failures, results) if int(res) == 1]
    expired = [f.id for f, res in zip(failures, results) if int(res) == -1]
    return retried, expired
