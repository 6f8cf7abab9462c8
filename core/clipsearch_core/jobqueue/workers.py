"""The registry of encoder workers (their heartbeats, `WorkerInfo`) and the recovery of jobs held by a worker
that is gone or no longer works on them: `take_over_dead`, `release`, `release_orphans`.

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
them before the visibility timeout. Orphans come from Redis going away or restarting under a worker: an
acknowledgement (finish) that failed while Redis was unreachable (the worker moves on, the job stays
pending for it), a read whose reply was lost, or a Redis restarted from an append-only file that lost its
last writes (everysec: up to about a second), which brings back, pending, jobs the worker had finished.
Jobs it left pending on purpose after a transient error are not orphans (the worker passes them as held
until the visibility timeout has passed): reclaim_stale must redeliver them, which raises their delivery
count, or max_deliveries would never end them.
Redoing them is safe: upserts are idempotent and the XACK guard counts each job once. A lost second
cannot make the counters wrong either: the finish script's XACK, XDEL and counter increments are one
transaction in the AOF, kept or lost together, so a job whose count was lost is pending again and is
counted when it is redone. (A submission lost in that second is lost whole, its `submitted` count
included; if a worker had already indexed it, the server has the image and the counters never knew it.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Sequence

import redis

from .connection import QueuePart
from .jobs import Job, text
from .keys import GROUP, PARKING

__all__ = ["RELEASED_IDLE_MS", "WORKER_ALIVE_S", "WorkerInfo", "WorkerRegistry", "now_ms", "redis_now_ms"]

WORKER_ALIVE_S = 30.0  # a worker heard from within this long is shown alive (status, metrics)
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


def now_ms() -> int:
    return int(time.time() * 1000)


def redis_now_ms(r: redis.Redis) -> int:
    """Redis's clock in ms: heartbeats are written and judged with one clock, whatever the hosts' clocks say."""
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


class WorkerRegistry(QueuePart):
    """Workers' heartbeats, and the jobs of workers that are gone or stop."""

    def report_worker(self, info: WorkerInfo) -> None:
        """Records a worker's heartbeat (its `last_seen_ms` is Redis's clock now)."""
        self.redis.hset(self.keys.workers, info.name,
                        json.dumps({**info.__dict__, "last_seen_ms": redis_now_ms(self.redis)}))

    def remove_worker(self, name: str) -> None:
        self.redis.hdel(self.keys.workers, name)

    def take_over_dead(self, consumer: str, ttl_ms: int, count: int) -> list[Job]:
        """Takes over (for `consumer`) the pending jobs of consumers whose heartbeat is older than `ttl_ms`,
        and of the parking consumer (jobs released by stopping workers); a dead consumer is removed from the
        group once it holds nothing. Consumers that never reported a heartbeat are left to `reclaim_stale`.
        A job taken from a dead worker counts as a new delivery; a released one does not."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_consumers(self.keys.jobs, GROUP)
        pipe.hgetall(self.keys.workers)
        consumers, records = pipe.execute()
        records = {text(k): v for k, v in records.items()}
        now = redis_now_ms(self.redis)
        taken: list[Job] = []
        for info in consumers:
            name = text(info["name"])
            if name == consumer or len(taken) >= count:
                continue
            if name == PARKING:
                seen, is_delivery = b"", False
            elif name in records and now - WorkerInfo.from_json(name, records[name]).last_seen_ms > ttl_ms:
                seen, is_delivery = records[name], True
            else:
                continue  # alive, or never reported (the visibility timeout covers those)
            rows = self.scripts.take_over(dead=name, taker=consumer, seen_record=seen, count=count - len(taken),
                                          is_delivery=is_delivery)
            taken.extend(
                replace(Job.from_entry(entry_id, dict(zip(fields[::2], fields[1::2]))), attempts=int(deliveries))
                for entry_id, fields, deliveries in rows
            )
        return taken

    def release(self, consumer: str) -> int:
        """Gives back every job `consumer` holds (to the parking consumer, delivery counts unchanged) and
        removes `consumer` from the group, so that live workers take the jobs at once. For a worker that
        stops without finishing what it took. Returns how many jobs were released."""
        return self.scripts.release(consumer=consumer, idle_ms=RELEASED_IDLE_MS)

    def release_orphans(self, consumer: str, held: Sequence[str], min_idle_ms: int, count: int = 1000) -> list[str]:
        """Gives back (to the parking consumer, like `release`) the jobs that Redis says `consumer` holds but
        that are not among `held`, the entry ids the worker is really working on, once idle for `min_idle_ms`
        (a job just read or claimed is not yet in `held`: its idle time is near 0). Such orphans are left by
        a finish that failed while Redis was unreachable, a read whose reply was lost, or a Redis restarted
        from an append-only file that lost its last acknowledgements. Live workers, this one included, take
        them over at once (`take_over_dead`). Returns the entry ids released (at most `count` per call)."""
        return self.scripts.release_orphans(consumer=consumer, held=held, min_idle_ms=min_idle_ms,
                                            idle_ms=RELEASED_IDLE_MS, count=count)
