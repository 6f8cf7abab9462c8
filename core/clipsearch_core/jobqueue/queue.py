"""`JobQueue`: the queue's protocol as one object, bound to a Redis client and a key layout; its methods
are the operations, grouped by part in their own modules (submission, delivery, workers, status)."""

from __future__ import annotations

import redis

from .connection import connect
from .delivery import Delivery
from .keys import GROUP, Keys
from .scripts import Scripts
from .state import StatusView
from .submission import Submission
from .workers import WorkerRegistry

__all__ = ["JobQueue"]


class JobQueue(Submission, Delivery, WorkerRegistry, StatusView):
    """The ingestion queue on one Redis client, under one key prefix.

    Submission (the server): `submit`, `find_request`, `retry`. Delivery (a worker): `read`,
    `reclaim_stale`, `keep_alive`, `load_blobs`, `record_transient_errors`, `last_errors`, `finish`.
    Workers: `report_worker`, `remove_worker`, `take_over_dead`, `release`, `release_orphans`. Status:
    `status`, `usage`, `progress`, `failures`. Its Lua scripts are registered once, here.

    Safe to share between threads as far as its client is (a `redis.Redis` with a connection pool is;
    a `single_connection` one belongs to one thread)."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.redis = r
        self.keys = keys
        self.scripts = Scripts(r, keys)

    @classmethod
    def connect(cls, url: str, prefix: str = "clipsearch", *, single_connection: bool = False) -> "JobQueue":
        """A queue on a new client for `url` (see `connection.connect`, also for `single_connection`)."""
        return cls(connect(url, single_connection=single_connection), Keys(prefix))

    def ensure_group(self) -> None:
        """Creates the jobs stream and consumer group if missing (from the stream's start: no job is skipped)."""
        try:
            self.redis.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def close(self) -> None:
        """Closes its client."""
        self.redis.close()

    def __repr__(self) -> str:
        return f"JobQueue({self.keys.prefix!r})"
