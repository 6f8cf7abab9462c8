"""Putting jobs on the queue: `submit` (atomic, remembered per request id so that a retried call lands
once), `find_request`, and `retry` of dead-lettered jobs."""

from __future__ import annotations

import json
from typing import Any, Sequence

import redis

from .connection import QueuePart
from .jobs import Failure, Job, Submitted
from .keys import BATCH_TTL_S, REQUEST_TTL_S, Keys

__all__ = ["Submission"]


class Submission(QueuePart):
    """The server's side of the queue: what goes in."""

    def find_request(self, request_id: str) -> Submitted | None:
        """The result of an earlier submission with this request id, if it is still remembered."""
        return _find_request(self.redis, self.keys, request_id)

    def submit(self, jobs: Sequence[Job], blobs: Sequence[bytes | None], batch_id: str,
               request_id: str = "") -> Submitted:
        """Queues jobs atomically (all or none), storing inline bytes under their own keys.

        With a request id, the result is recorded in the same transaction (for REQUEST_TTL_S), and a
        request id already recorded queues nothing and returns the first call's result: a retried call
        lands once. WATCH makes two concurrent calls with one request id queue once."""
        keys = self.keys
        result = Submitted(batch_id, [job.id for job in jobs])
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if request_id:
                        pipe.watch(keys.request(request_id))
                        earlier = _find_request(pipe, keys, request_id)
                        if earlier is not None:
                            return earlier
                        pipe.multi()
                        pipe.set(keys.request(request_id), json.dumps(result.__dict__), ex=REQUEST_TTL_S)
                    for job, blob in zip(jobs, blobs, strict=True):
                        if blob is not None:
                            pipe.set(keys.blob(job.uid), blob)
                        fields: dict[Any, Any] = job.to_fields()  # as redis-py's xadd is typed
                        pipe.xadd(keys.jobs, fields)
                    pipe.incrby(keys.queued_bytes, sum(len(b) for b in blobs if b))
                    pipe.hincrby(keys.progress, "submitted", len(jobs))
                    pipe.hincrby(keys.batch(batch_id), "submitted", len(jobs))
                    pipe.expire(keys.batch(batch_id), BATCH_TTL_S)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue  # the same request id was recorded meanwhile: return that result

    def retry(self, failures: Sequence[Failure]) -> tuple[list[str], list[str]]:
        """Queues failed jobs again; returns (retried ids, ids whose inline bytes have expired)."""
        pipe = self.redis.pipeline(transaction=False)
        for f in failures:
            self.scripts.retry(pipe, f)
        results = pipe.execute()
        retried = [f.id for f, res in zip(failures, results) if int(res) == 1]
        expired = [f.id for f, res in zip(failures, results) if int(res) == -1]
        return retried, expired


def _find_request(client: "redis.Redis | redis.client.Pipeline", keys: Keys, request_id: str) -> Submitted | None:
    """find_request on `client` (a pipeline watching the key, within `submit`)."""
    raw = client.get(keys.request(request_id)) if request_id else None
    if raw is None:
        return None
    data = json.loads(raw)
    return Submitted(data["batch_id"], list(data["ids"]))
