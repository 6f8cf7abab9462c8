"""Ingestion on the server side: turning client submissions into queued jobs, and reporting progress.

The queue itself (key names, job format, Lua) lives in clipsearch_core.jobqueue; this module adds
what only the API needs: id derivation for images without one, batch ids, and Redis errors
translated into Unavailable.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import redis

from clipsearch_core import jobqueue
from clipsearch_core.errors import NotFound, ResourceExhausted, Unavailable
from clipsearch_core.jobqueue import Failure, Job, Keys, Progress
from clipsearch_server.storage import fields as typed

__all__ = ["Ingestor", "QueuedImage", "derive_id"]

T = TypeVar("T")


@dataclass(frozen=True)
class QueuedImage:
    """One validated image of a SubmitImages request, to be queued: bytes or uri (or both), optional id,
    metadata. (The client's `clipsearch.Submission` is the reply, a different thing.)"""

    id: str = ""
    image: bytes = b""
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    fields: dict = field(default_factory=dict)  # validated typed fields (fields.Fields)


def derive_id(sub: QueuedImage) -> str:
    """The caller's id, else 32 hex digits of SHA-256 over the uri (or the bytes when there is no uri)."""
    if sub.id:
        return sub.id
    source = sub.uri.encode() if sub.uri else sub.image
    return hashlib.sha256(source).hexdigest()[:32]


class Ingestor:
    """Queues submissions in Redis and reads progress back."""

    def __init__(self, client: redis.Redis, keys: Keys, max_jobs: int, max_bytes: int) -> None:
        self.redis = client
        self._keys = keys
        self.queue = jobqueue.JobQueue(client, keys)  # its scripts registered once, not per call
        self._max_jobs = max_jobs
        self._max_bytes = max_bytes
        self._group_ready = False

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise Unavailable(f"the ingestion queue (Redis) is unavailable: {exc}") from exc

    def submit(self, images: Sequence[QueuedImage], batch_id: str = "", request_id: str = "") -> tuple[str, list[str]]:
        """Queues all images atomically; returns (batch id, image ids). A request id seen before (within
        jobqueue.REQUEST_TTL_S) queues nothing and returns the first call's result."""
        batch_id = batch_id or uuid.uuid4().hex
        jobs = [Job(id=derive_id(s), uri=s.uri, metadata=s.metadata, batch_id=batch_id, has_blob=bool(s.image),
                    fields_json=typed.to_json(s.fields) if s.fields else "")
                for s in images]
        blobs = [s.image or None for s in images]

        def run() -> jobqueue.Submitted:
            if not self._group_ready:
                self.queue.ensure_group()
                self._group_ready = True
            earlier = self.queue.find_request(request_id)
            if earlier is not None:
                return earlier  # a retry of a call that succeeded: not refused for a full queue either
            self._check_room(len(jobs), sum(len(b) for b in blobs if b))
            return self.queue.submit(jobs, blobs, batch_id, request_id)

        done = self._call(run)
        return done.batch_id, done.ids

    def _check_room(self, jobs: int, size: int) -> None:
        queued_jobs, queued_bytes = self.queue.usage()
        if queued_jobs + jobs > self._max_jobs or queued_bytes + size > self._max_bytes:
            raise ResourceExhausted(
                f"the ingestion queue is full ({queued_jobs} jobs, {queued_bytes} bytes queued; limits "
                f"{self._max_jobs} jobs, {self._max_bytes} bytes); retry in a few seconds, or submit by uri",
                retry_after_s=5.0,
            )

    def progress(self, batch_id: str = "") -> Progress:
        found = self._call(lambda: self.queue.progress(batch_id))
        if found is None:
            raise NotFound(f"no batch {batch_id!r} (unknown, or expired {jobqueue.BATCH_TTL_S // 86400} days after "
                           "its last submission)")
        return found

    def failures(self, batch_id: str = "", limit: int = 100) -> list[Failure]:
        return self._call(lambda: self.queue.failures(batch_id, limit))

    def status(self) -> jobqueue.QueueStatus:
        return self._call(lambda: self.queue.status())

    def retry(self, batch_id: str = "", ids: Sequence[str] = ()) -> tuple[list[str], list[str]]:
        """Queues failed images again; returns (retried ids, ids whose bytes expired)."""
        wanted = set(ids)

        def run() -> tuple[list[str], list[str]]:
            found = self.queue.failures(batch_id, jobqueue.FAILURES_MAXLEN * 2)
            return self.queue.retry([f for f in found if not wanted or f.id in wanted])

        return self._call(run)
