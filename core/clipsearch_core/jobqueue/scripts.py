"""The queue's Lua scripts, and `Scripts`: each registered once per connection, each run by one method
that is the only place ordering its KEYS and ARGV.

Every script first names its KEYS and ARGV slots (`local stream = KEYS[1]`, ...) and uses only those
names. All KEYS are under one hash tag (see `keys`), so a script may touch them all in Redis Cluster.
Scripts are loaded with EVALSHA; one that Redis lost (a restart) is loaded again by the call that
misses it (redis-py's Script), and a pipeline loads its scripts before it runs.
"""

from __future__ import annotations

from typing import Any, Sequence

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from .jobs import FAILED, INDEXED, Failure, Job, text
from .keys import FAILED_BLOB_TTL_S, FAILURES_MAXLEN, GROUP, PARKING, Keys

__all__ = ["FINISH_CHUNK", "Scripts"]

FINISH_CHUNK = 256  # jobs per FINISH call (bounds the time one script blocks Redis)

# Finishes a batch of jobs in one call: per job, XACK; only if that removed it from the pending list
# (exactly-once counts): XDEL, counters, and delete its bytes (indexed) or dead-letter it (failed).
# KEYS: 5 shared keys, then 2 per job (its batch hash, its blob). ARGV: 3 shared values, then per job
# 6 values (entry_id, outcome, uid, reason, attempts, field_count) followed by its dead-letter fields
# (field_count values: k, v, ...; none for an indexed job). Returns how many jobs it finished.
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

# Queues one dead-lettered job again: refused (-1) when its inline bytes have expired, nothing done (0)
# when it is no longer in the dead letters (retried already); else it goes back on the jobs stream, its
# bytes kept for good and counted in queued-bytes again, and its failure uncounted (1).
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


class Scripts:
    """The scripts registered once on one client, for one key layout. Each method runs (or, given a
    pipeline, queues) one script, and is the one place that orders its KEYS and ARGV."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._finish = Script(r, _FINISH)
        self._retry = Script(r, _RETRY)
        self._take_over = Script(r, _TAKE_OVER)
        self._release = Script(r, _RELEASE)
        self._release_orphans = Script(r, _RELEASE_ORPHANS)

    def finish(self, pipe: Pipeline, outcomes: Sequence[tuple[Job, str | None]]) -> None:
        """Queues FINISH on `pipe` for these jobs (at most FINISH_CHUNK): (job, None) indexed, (job, reason) failed."""
        keys = self.keys
        job_keys: list[str] = []
        args: list[Any] = [GROUP, FAILURES_MAXLEN, FAILED_BLOB_TTL_S]
        for job, reason in outcomes:
            job_keys += [keys.batch(job.batch_id), keys.blob(job.uid)]
            fields = job.flat_fields() if reason is not None else []  # only failures are copied to the dead letters
            args += [job.entry_id, INDEXED if reason is None else FAILED, job.uid, reason or "", job.attempts,
                     len(fields), *fields]
        shared = [keys.jobs, keys.progress, keys.failures, keys.queued_bytes, keys.last_error]
        self._finish(keys=[*shared, *job_keys], args=args, client=pipe)

    def retry(self, pipe: Pipeline, failure: Failure) -> None:
        """Queues RETRY on `pipe` for one dead-lettered job."""
        keys, job = self.keys, failure.job
        self._retry(
            keys=[keys.failures, keys.jobs, keys.progress, keys.batch(failure.batch_id), keys.blob(job.uid),
                  keys.queued_bytes],
            args=[failure.entry_id, "1" if job.has_blob else "0", *job.flat_fields()],
            client=pipe,
        )

    def take_over(self, *, dead: str, taker: str, seen_record: bytes, count: int, is_delivery: bool) -> list[Any]:
        """TAKE_OVER: up to `count` pending jobs of consumer `dead` become `taker`'s; rows of
        (entry id, flat fields, delivery count)."""
        return list(self._take_over(keys=[self.keys.jobs, self.keys.workers],
                                    args=[GROUP, dead, taker, seen_record, count, "1" if is_delivery else "0"]))

    def release(self, *, consumer: str, idle_ms: int) -> int:
        """RELEASE: every pending job of `consumer` goes to the parking consumer; how many."""
        return int(self._release(keys=[self.keys.jobs], args=[GROUP, consumer, PARKING, idle_ms]))

    def release_orphans(self, *, consumer: str, held: Sequence[str], min_idle_ms: int, idle_ms: int,
                        count: int) -> list[str]:
        """RELEASE_ORPHANS: `consumer`'s idle pending jobs that are not in `held` go to the parking consumer."""
        released = self._release_orphans(keys=[self.keys.jobs],
                                         args=[GROUP, consumer, PARKING, min_idle_ms, idle_ms, count, *held])
        return [text(entry_id) for entry_id in released]
