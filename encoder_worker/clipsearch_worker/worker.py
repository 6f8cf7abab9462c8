"""The encoder worker: `Worker` wires its parts and runs the pipeline: take image jobs from Redis, decode,
encode in batches, push, acknowledge.

A job is acknowledged (and counted indexed or failed) only after the server has accepted its
vector, or after it failed for a reason that retrying cannot fix (an undecodable image).

The parts, one module each:
  feeder      the thread taking jobs (take-over of dead workers, reclaim, blocking reads) and starting
              their decoding
  pool        the decode pool (decode.py runs in it): chunks, results, restarts, device decoding
  pusher      UpsertVectors with its retry and split rules; `WorkerFatal`
  heartbeat   the heartbeat thread (keep_alive, release_orphans, report_worker)
  stopwatch   the stop watcher, which ends the feeder's blocking read on a stop
  inflight    the jobs held, and their release when the worker stops
  batch, config, metrics   the batch values, `WorkerConfig`, the Prometheus metrics

Jobs of a worker that is gone are redone without waiting for the visibility timeout:
  - a heartbeat thread reports the worker every few seconds (at most worker_ttl / 3 apart), whatever
    the main loop does, and keeps its jobs' idle time low;
  - every few seconds each worker takes over the jobs of workers whose heartbeat is older than
    worker_ttl (killed, host gone), and of workers that released them (JobQueue.take_over_dead);
  - a worker that stops, on SIGTERM or on WorkerFatal, first stops taking jobs, then releases the
    ones it took and did not finish (JobQueue.release) and leaves the consumer group;
  - jobs of consumers that never reported a heartbeat are reclaimed after the visibility timeout;
  - jobs Redis still has pending for this worker that it no longer works on (a finish that failed while
    Redis was unreachable, a Redis restarted from an AOF that lost its last acknowledgements) are given
    back by the heartbeat thread (JobQueue.release_orphans) and taken over at once.
A live worker's jobs are never taken, however long a batch takes: its heartbeat keeps it alive.
A job with a transient error (an unreachable URL) stays pending and is retried; a job delivered
more than `max_deliveries` times (it failed, or crashed workers, every time) is dead-lettered.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Sequence

import numpy as np
import redis

from clipsearch.v1 import index_service_pb2_grpc as index_grpc, types_pb2
from clipsearch_core.jobqueue import Job, JobQueue, WorkerInfo
from clipsearch_core.model import ClipEncoder

from .batch import Batch, Encoded
from .config import WorkerConfig, default_consumer_name
from .decode import Prepared
from .feeder import Feeder
from .heartbeat import Heartbeat
from .inflight import InFlight
from .metrics import BATCH_SECONDS, ENCODE_SECONDS, FAILURES, IMAGES, STAGE_SECONDS, reason_kind
from .pool import DecodePool
from .pusher import Pusher, WorkerFatal
from .stopwatch import watch_stop

__all__ = ["Worker", "WorkerConfig", "WorkerFatal", "default_consumer_name", "reason_kind"]

log = logging.getLogger(__name__)

_PREFETCH = 1  # batches read and decoding while the model works on the current one (decode_overlap)


def _usable(vectors: np.ndarray) -> np.ndarray:
    """Which rows the server can index, by its own test: finite as float32, with a finite, non-zero norm."""
    as_sent = np.asarray(vectors).astype("<f4")
    finite = np.isfinite(as_sent).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(np.where(finite[:, None], as_sent, 0), axis=1)
    return finite & np.isfinite(norms) & (norms > 0)


def _wake_on_failure(batches: "stdqueue.Queue[Batch | None]", push: "Future[None]") -> None:
    """Ends the main loop's wait for the next batch when a push failed (a WorkerFatal: the worker must
    stop even if no more jobs come); the loop then raises the push's exception."""
    if push.exception() is not None:
        batches.put(None)


def _thumbnail(job: Job, thumb: "bytes | None | Future[bytes | None]") -> bytes | None:
    """A thumbnail's bytes; None (the image is indexed without one) if its encode failed."""
    if not isinstance(thumb, Future):
        return thumb
    try:
        return thumb.result()
    except Exception as exc:  # noqa: BLE001 - a thumbnail must never fail its image
        log.warning("thumbnail of image %s not made (%s: %s)", job.id, type(exc).__name__, exc)
        return None


class Worker:
    """One encoder worker process's loop."""

    def __init__(self, config: WorkerConfig, encoder: ClipEncoder) -> None:
        self.config = config
        self.encoder = encoder
        encoder.own_decode_stream = config.decode_stream
        self.queue = JobQueue.connect(config.redis_url, config.redis_prefix)
        self.keys = self.queue.keys
        self.redis = self.queue.redis
        # the feeder's blocking reads, on a connection of their own (its id is what a stop interrupts)
        self._reader = JobQueue.connect(config.redis_url, config.redis_prefix, single_connection=True)
        self._channel = config.connection.channel()
        self._index = index_grpc.IndexServiceStub(self._channel)
        self.processed = 0
        self._in_flight = InFlight(config.visibility_timeout_s)
        self._closed = threading.Event()
        self._abort = threading.Event()  # set when run() fails: pushes stop retrying
        self._pool = DecodePool(config, encoder, self._closed)
        self._feeder = Feeder(config, self.queue, self._reader, self._in_flight, self._pool)
        self._pusher = Pusher(self._index, config.connection.metadata(),
                              types_pb2.ModelInfo(name=encoder.identity, dim=encoder.dim),
                              mime_type=config.thumbnail.mime_type, timeout_s=config.push_timeout_s, abort=self._abort)
        self._heartbeat = Heartbeat(self.queue, config.consumer, self._in_flight, self._info,
                                    visibility_timeout_s=config.visibility_timeout_s, worker_ttl_s=config.worker_ttl_s,
                                    closed=self._closed)
        self._heartbeat.start()

    @property
    def _reader_id(self) -> int | None:
        """The id of the connection of the feeder's blocking reads (None when they cannot be interrupted)."""
        return self._feeder.reader_id

    def _info(self) -> WorkerInfo:
        """What the heartbeat reports about this worker."""
        return WorkerInfo(self.config.consumer, 0, self.processed, self.encoder.device, self.encoder.identity)

    def run(self, stop: threading.Event) -> None:
        """Processes jobs until `stop` is set, then finishes what it has already taken.
        Raises WorkerFatal for unrecoverable configuration errors.

        A feeder thread reads the next batch from Redis and starts decoding it in the pool while
        this thread runs the model on the current one, and a pusher thread sends the previous batch's
        vectors to the server and acknowledges its jobs (at most `_PREFETCH + 2` batches in hand, pushed
        in order, one at a time). With --device-decode a device-decode thread also decodes the next
        batch's JPEGs on the device while the model encodes this one (one more batch in hand). Without
        overlap it reads, decodes, encodes and pushes one batch after the other.
        """
        overlap = self.config.overlaps(self.encoder.device)
        ahead = overlap and self.config.device_decode
        log.info("worker %s consuming %s (decoding and pushing beside the model: %s)", self.config.consumer,
                 self.keys.jobs, "on" if overlap else "off")
        batches: "stdqueue.Queue[Batch | None]" = stdqueue.Queue()  # ready for the model
        taken: "stdqueue.Queue[Batch | None]" = stdqueue.Queue() if ahead else batches  # the feeder's
        slots = threading.Semaphore(_PREFETCH + 2 + (1 if ahead else 0) if overlap else 1)
        halt = threading.Event()  # stops the feeder: set on `stop` or on a fatal error
        feeder = threading.Thread(target=self._feeder.run, args=(stop, halt, taken, slots), name="feeder",
                                  daemon=True)
        feeder.start()
        threading.Thread(target=watch_stop, args=(self.redis, self._feeder, feeder, stop, halt), name="stop-watch",
                         daemon=True).start()
        preparer = threading.Thread(target=self._prepare_ahead, args=(halt, taken, batches), name="device-decode",
                                    daemon=True) if ahead else None
        if preparer is not None:
            preparer.start()
        pusher = ThreadPoolExecutor(1, thread_name_prefix="pusher") if overlap else None
        pushing: "Future[None] | None" = None
        try:
            while (batch := batches.get()) is not None:
                try:
                    if batch.error is not None:
                        raise batch.error
                    encoded = self._encode_batch(batch)
                    if pushing is not None:
                        previous, pushing = pushing, None
                        previous.result()  # pushes stay in order; a WorkerFatal of the last push stops here
                except redis.RedisError as exc:
                    log.warning("Redis unavailable while finishing a batch (%s); its jobs stay pending", exc)
                    self._done(batch, slots)
                    stop.wait(1.0)
                    continue
                except BaseException:
                    self._done(batch, slots)
                    raise
                if pusher is None:
                    self._complete(batch, encoded, stop, slots)
                else:
                    pushing = pusher.submit(self._complete, batch, encoded, stop, slots)
                    pushing.add_done_callback(partial(_wake_on_failure, batches))
            if pushing is not None:
                pushing.result()  # a failed push (WorkerFatal) woke the loop above with None: raised here
        except BaseException:
            self._abort.set()  # a push retrying against an unreachable server gives up: the jobs are released
            raise
        finally:
            halt.set()
            if pusher is not None:
                pusher.shutdown(wait=True)  # the last push ends (or fails) before the jobs are released
            feeder.join(timeout=10)
            if preparer is not None:
                preparer.join(timeout=10)
            self._in_flight.release_all(self.queue, self.config.consumer, self.config.worker_ttl_s)

    def _done(self, batch: Batch, slots: threading.Semaphore) -> None:
        self._in_flight.forget(batch.jobs)
        slots.release()

    def _prepare_ahead(self, halt: threading.Event, taken: "stdqueue.Queue[Batch | None]",
                       batches: "stdqueue.Queue[Batch | None]") -> None:
        """The device-decode thread: prepares each batch the feeder took, in order, while the main thread
        runs the model on the one before; a batch whose preparation raised carries the exception to the
        main loop, which raises it. Once the main loop has stopped (`halt`), batches are dropped, not
        prepared: run() releases their jobs."""
        try:
            while (batch := taken.get()) is not None:
                if halt.is_set():
                    self._feeder.drop(batch)
                    continue
                try:
                    self._prepare(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the main loop, raised there
                    batch.error = exc
                batches.put(batch)
        finally:
            batches.put(None)

    def _prepare(self, batch: Batch) -> None:
        """Collects the decode pool's results for a batch and decodes its JPEGs on the device."""
        with STAGE_SECONDS.labels("collect").time():
            prepared = self._pool.collect(batch)
        with STAGE_SECONDS.labels("device_decode").time():
            self._decode_on_device(prepared)
        batch.prepared = prepared

    def _decode_on_device(self, prepared: list[tuple[Job, Prepared]]) -> None:
        self._pool.decode_on_device(prepared)

    def _encode_batch(self, batch: Batch) -> Encoded:
        """The batch's decoded images through the model, and the outcomes known before the push."""
        outcomes: list[tuple[Job, str | None]] = []
        chunked = {job.entry_id for jobs, _ in batch.chunks for job in jobs}
        exhausted = [job for job in batch.jobs if job.entry_id not in chunked]
        for job, last in zip(exhausted, self.queue.last_errors(exhausted)):
            outcomes.append((job, f"gave up after {job.attempts - 1} attempts: "
                                  f"{last or 'a worker crashed or stalled on this image each time'}"))
        if batch.prepared is None:  # not prepared ahead on the device-decode thread
            self._prepare(batch)
        prepared = batch.prepared or []
        good: "list[tuple[Job, Any, bytes | None | Future[bytes | None]]]" = []
        retried: list[tuple[Job, str]] = []
        for job, (kind, value, reason, thumb) in prepared:
            if kind == "input":
                good.append((job, value, thumb))
            elif kind == "transient":
                retried.append((job, reason))
                log.info("image %s will be retried (attempt %d): %s", job.id, job.attempts, reason)
            else:  # "failed" (a kind left unprepared would be a bug: it fails with a reason, never silently)
                outcomes.append((job, reason or f"the image was not prepared for the model ({kind})"))
        self.queue.record_transient_errors(retried)
        self._in_flight.retry_later(job for job, _ in retried)  # redelivered after the visibility timeout
        vectors = None
        if good:
            with ENCODE_SECONDS.time(), STAGE_SECONDS.labels("encode").time():
                vectors = self.encoder.encode_images([tensor for _, tensor, _ in good])
            usable = _usable(vectors)
            if not usable.all():  # the server would refuse the whole push: these images fail alone
                reason = ("the model gave this image a vector with NaN, infinite or only zero values "
                          "(an overflow in reduced precision?)")
                outcomes.extend((job, reason) for (job, _, _), ok in zip(good, usable) if not ok)
                good, vectors = [g for g, ok in zip(good, usable) if ok], vectors[usable]
        return Encoded([job for job, _, _ in good], vectors, [thumb for _, _, thumb in good], outcomes)

    def _complete(self, batch: Batch, encoded: Encoded, stop: threading.Event, slots: threading.Semaphore) -> None:
        """Pushes a batch's vectors, acknowledges its jobs and gives its slot back (the pusher thread's
        work when pushes overlap the model, else the main thread's). Raises WorkerFatal."""
        try:
            outcomes = encoded.outcomes
            if encoded.jobs:
                thumbs = [_thumbnail(job, thumb) for job, thumb in zip(encoded.jobs, encoded.thumbs)]
                with STAGE_SECONDS.labels("push").time():
                    errors = self._push(encoded.jobs, encoded.vectors, thumbs, stop)
                if errors is None:
                    return  # stopped, not acknowledged: another worker (or our restart) will redo them
                outcomes = outcomes + list(zip(encoded.jobs, errors))
            with STAGE_SECONDS.labels("finish").time():
                self.queue.finish(outcomes)
        except redis.RedisError as exc:
            log.warning("Redis unavailable while finishing a batch (%s); its jobs stay pending", exc)
            stop.wait(1.0)
            return
        finally:
            self._done(batch, slots)
        self.processed += len(outcomes)  # jobs this worker brought to an end (indexed or failed)
        BATCH_SECONDS.observe(time.perf_counter() - batch.started)
        for job, reason in outcomes:
            IMAGES.labels("failed" if reason else "indexed").inc()
            if reason:
                FAILURES.labels(reason_kind(reason)).inc()
                log.info("image %s failed: %s", job.id, reason)

    def _push(self, jobs: Sequence[Job], vectors: np.ndarray, thumbs: Sequence[bytes | None],
              stop: threading.Event) -> list[str | None] | None:
        """Pusher.push: each job's failure reason (None: indexed), or None if interrupted."""
        return self._pusher.push(jobs, vectors, thumbs, stop)

    def close(self) -> None:
        self._closed.set()
        self._heartbeat.join(timeout=5)
        try:
            self.queue.remove_worker(self.config.consumer)
        except redis.RedisError:
            pass
        self._pool.shutdown()
        self._channel.close()
        self._reader.close()
        self.queue.close()
