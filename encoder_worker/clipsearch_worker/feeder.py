"""The feeder: the thread that takes jobs from the queue and starts decoding them, one batch at a time
while a slot is free. It takes, in this order, the jobs of dead or stopped workers (`take_over_dead`, every
few seconds), jobs held past the visibility timeout by consumers that never reported a heartbeat
(`reclaim_stale`), then new jobs in a blocking read on a connection of its own, whose id the stop watcher
(stopwatch.py) uses to end that read at once on a stop."""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from pathlib import Path

import redis

from clipsearch_core import jobqueue
from clipsearch_core.jobqueue import Job, JobQueue

from .batch import Batch
from .config import WorkerConfig
from .inflight import InFlight
from .pool import DecodePool

__all__ = ["Feeder"]

log = logging.getLogger(__name__)


class Feeder:
    """Takes jobs for one worker. `queue` is the worker's shared client; `reader` a single-connection one
    for the blocking reads (`reader_id` is its connection's id while it can be interrupted)."""

    def __init__(self, config: WorkerConfig, queue: JobQueue, reader: JobQueue, in_flight: InFlight,
                 pool: DecodePool) -> None:
        self.config = config
        self.queue = queue
        self.reader = reader
        self.reader_id: int | None = None  # the reader connection's id, for interrupt_read
        self.interruptible = True  # False once Redis refused CLIENT ID or CLIENT UNBLOCK (an ACL without them)
        self._in_flight = in_flight
        self._pool = pool
        self._last_reclaim = 0.0
        self._last_take_over = 0.0

    def run(self, stop: threading.Event, halt: threading.Event, batches: "stdqueue.Queue[Batch | None]",
            slots: threading.Semaphore) -> None:
        """The feeder thread: a batch into `batches` for each slot taken, until `stop` or `halt`; then None."""
        ready = False
        try:
            while not stop.is_set() and not halt.is_set():
                if self.config.heartbeat_file:
                    Path(self.config.heartbeat_file).touch()
                if not slots.acquire(timeout=0.5):
                    continue
                try:
                    if not ready:
                        self.queue.ensure_group()
                        ready = True
                    batch = self._start_batch()
                except redis.RedisError as exc:
                    batch, ready = None, False
                    log.warning("Redis unavailable (%s); retrying in 1s", exc)
                    stop.wait(1.0)
                if batch is None:
                    slots.release()
                elif halt.is_set():
                    self.drop(batch)
                else:
                    batches.put(batch)
        finally:
            batches.put(None)

    def drop(self, batch: Batch) -> None:
        """Lets go of a batch taken after the main loop stopped: the worker releases its jobs."""
        self._in_flight.forget(batch.jobs)
        for _, future in batch.chunks:
            future.cancel()

    def _start_batch(self) -> Batch | None:
        """Takes the next jobs and starts reading and decoding them in the pool (exhausted jobs, delivered
        more than max_deliveries times, are not decoded: they fail)."""
        jobs = self._next_jobs()
        if not jobs:
            return None
        self._in_flight.add(jobs)
        fresh = [job for job in jobs if job.attempts <= self.config.max_deliveries]
        try:
            blobs = self.queue.load_blobs(fresh)
        except redis.RedisError:
            self._in_flight.forget(jobs)  # not ours to keep alive any more: let them be reclaimed
            raise
        return Batch(jobs, self._pool.start(fresh, blobs), time.perf_counter())

    def _next_jobs(self) -> list[Job]:
        config, consumer = self.config, self.config.consumer
        now = time.monotonic()
        if now - self._last_take_over >= min(5.0, config.worker_ttl_s / 3):
            self._last_take_over = now
            taken = self.queue.take_over_dead(consumer, int(config.worker_ttl_s * 1000), config.batch_size)
            if taken:
                log.info("took over %d jobs of stopped or dead workers", len(taken))
                if len(taken) >= config.batch_size:
                    self._last_take_over = 0.0  # there may be more: look again for the next batch
                return taken
        if now - self._last_reclaim >= min(30.0, config.visibility_timeout_s / 2):
            self._last_reclaim = now
            stale = self.queue.reclaim_stale(consumer, int(config.visibility_timeout_s * 1000), config.batch_size)
            if stale:
                log.info("reclaimed %d jobs abandoned by other workers", len(stale))
                return stale
        if self.interruptible:
            try:
                # asked each time (a reconnect changes it), through the package's function (the stable entry point)
                self.reader_id = jobqueue.connection_id(self.reader.redis)
            except redis.ResponseError as exc:  # CLIENT denied (an ACL): reads go on, a stop waits them out
                log.info("the queue's blocking reads cannot be interrupted on stop (%s)", exc)
                self.interruptible, self.reader_id = False, None
        return self.reader.read(consumer, config.batch_size, config.block_ms)
