"""The Redis connection a queue is bound to: `connect` (bounded timeouts; the single-connection client a
worker's blocking reads use), that connection's id and interrupting its blocking read, and `QueuePart`,
what every part of `JobQueue` works on (the client, the key layout, the scripts registered on it)."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .keys import Keys
from .scripts import Scripts

__all__ = ["QueuePart", "connect", "connection_id", "interrupt_read"]


def connect(url: str, *, single_connection: bool = False) -> redis.Redis:
    """A Redis client for `url` (redis://host:port/db) with bounded timeouts. Replies are bytes
    (image blobs are binary); the queue's methods decode what they return.

    `single_connection`: a client for one thread (a worker's reader), whose commands all go over one
    connection, so that the id `connection_id` gives is the one its blocking reads use (for
    `interrupt_read`). It is connected at first use, and a dropped connection raises instead of being
    replaced inside the call, which would leave the id stale (no retries, said explicitly: `from_url`
    has none by default today, `redis.Redis()` has ten): the caller asks the id again after an error."""
    one = {"max_connections": 1, "retry": Retry(NoBackoff(), 0)} if single_connection else {}
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30, **one)


def connection_id(r: redis.Redis) -> int:
    """The server's id of the connection of `r` (a `connect(..., single_connection=True)` client)."""
    return int(r.client_id())


def interrupt_read(r: redis.Redis, reader_id: int) -> bool:
    """Ends the blocking `JobQueue.read` of connection `reader_id` now, as if its wait had run out (no jobs
    delivered); so that a stopping worker does not wait out `block_ms`. False if it was not blocked."""
    return bool(r.client_unblock(reader_id))


class QueuePart:
    """What each part of the queue's protocol (submission, delivery, workers, status) works on; `JobQueue`
    is all of them, bound to one client and one key layout."""

    redis: redis.Redis
    keys: Keys
    scripts: Scripts
