"""Every name the queue gives things in Redis, in one place: the keys (`Keys`, derived from one prefix),
the consumer group, the parking consumer, and how long the keys that expire live.

Layout (all keys share one hash tag, so they live in one Redis Cluster slot and Lua can touch them):
  {prefix}:jobs           stream of image jobs, consumed by the consumer group "encoders" (GROUP)
  {prefix}:blob:<uid>     inline image bytes of one queued job, deleted when the job is done
  {prefix}:progress       hash: submitted / indexed / failed totals
  {prefix}:batch:<id>     hash: submitted / indexed / failed of one submission batch (expires)
  {prefix}:failures       dead-letter stream: failed jobs with their reason and attempts (capped)
  {prefix}:queued-bytes   inline bytes held by jobs not yet done (for backpressure)
  {prefix}:last-error     hash uid -> last transient error of a job that will be retried
  {prefix}:workers        hash consumer -> JSON heartbeat of each encoder worker (liveness and status)
  {prefix}:request:<id>   the reply of one SubmitImages call, by the caller's request id (expires)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BATCH_TTL_S", "FAILED_BLOB_TTL_S", "FAILURES_MAXLEN", "GROUP", "Keys", "PARKING", "REQUEST_TTL_S"]

GROUP = "encoders"  # the consumer group of the jobs stream: every encoder worker is one of its consumers
PARKING = "(released)"  # consumer holding jobs that a stopping worker gave back; taken over at once
BATCH_TTL_S = 7 * 24 * 3600  # a batch's counts expire this long after its last submission
REQUEST_TTL_S = 24 * 3600  # how long a SubmitImages request id is remembered (retries within it land once)
FAILED_BLOB_TTL_S = 7 * 24 * 3600  # a failed job's inline bytes are kept this long, for a retry
FAILURES_MAXLEN = 100_000  # the dead-letter stream is capped at about this many entries


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
