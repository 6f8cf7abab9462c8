"""What the queue reports about its state: its depth and workers (`status`, `QueueStatus`), its inline
bytes (`usage`, for backpressure), the ingestion counts (`progress`) and the dead letters (`failures`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from .connection import QueuePart
from .jobs import Failure, Progress, decoded, text
from .keys import GROUP
from .workers import WORKER_ALIVE_S, WorkerInfo, now_ms

__all__ = ["QueueStatus", "StatusView"]


@dataclass(frozen=True)
class QueueStatus:
    """jobs: not finished; in_flight: delivered to a worker, not finished; lag: not yet delivered."""

    jobs: int
    in_flight: int
    lag: int
    queued_bytes: int
    workers: list[WorkerInfo]


class StatusView(QueuePart):
    """Reading the queue's state (for `clipsearch status`, metrics, backpressure and GetProgress)."""

    def usage(self) -> tuple[int, int]:
        """(jobs not yet done, inline bytes they hold)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.keys.jobs)
        pipe.get(self.keys.queued_bytes)
        jobs, size = pipe.execute()
        return int(jobs), int(size or 0)

    def status(self) -> QueueStatus:
        """Queue depth, in-flight and undelivered jobs, and the workers (stale entries are pruned)."""
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(keys.jobs)
        pipe.xpending(keys.jobs, GROUP)
        pipe.get(keys.queued_bytes)
        pipe.hgetall(keys.workers)
        try:
            jobs, pending, size, workers = pipe.execute()
        except redis.ResponseError:  # no stream/group yet
            return QueueStatus(0, 0, 0, 0, [])
        infos = [WorkerInfo.from_json(text(k), v) for k, v in workers.items()]
        dead = [w.name for w in infos if now_ms() - w.last_seen_ms > 10 * WORKER_ALIVE_S * 1000]
        if dead:
            self.redis.hdel(keys.workers, *dead)
        in_flight = int(pending["pending"]) if pending else 0
        return QueueStatus(int(jobs), in_flight, max(0, int(jobs) - in_flight), int(size or 0),
                           sorted((w for w in infos if w.name not in dead), key=lambda w: w.name))

    def progress(self, batch_id: str = "") -> Progress | None:
        """Counts for a batch (None if unknown or expired) or, with no batch id, for the whole service."""
        values = decoded(self.redis.hgetall(self.keys.batch(batch_id) if batch_id else self.keys.progress))
        if batch_id and not values:
            return None
        return Progress(*(int(values.get(name, 0)) for name in ("submitted", "indexed", "failed")))

    def failures(self, batch_id: str = "", limit: int = 100) -> list[Failure]:
        """The newest failures, optionally of one batch only."""
        found: list[Failure] = []
        last: Any = "+"
        while len(found) < limit:
            entries: Any = self.redis.xrevrange(self.keys.failures, max=last, count=1000)
            if last != "+":
                entries = entries[1:]
            if not entries:
                break
            for entry_id, raw in entries:
                if batch_id and decoded(raw).get("batch") != batch_id:
                    continue
                found.append(Failure.from_entry(entry_id, raw))
                if len(found) >= limit:
                    break
            last = entries[-1][0]
        return found
