"""The encoder worker loop: take image jobs from Redis, decode, encode in batches, push, acknowledge.

A job is acknowledged (and counted indexed or failed) only after the server has accepted its
vector, or after it failed for a reason that retrying cannot fix (an undecodable image).

Jobs of a worker that is gone are redone without waiting for the visibility timeout:
  - a heartbeat thread reports the worker every few seconds (at most worker_ttl / 3 apart), whatever
    the main loop does, and keeps its jobs' idle time low;
  - every few seconds each worker takes over the jobs of workers whose heartbeat is older than
    worker_ttl (killed, host gone), and of workers that released them (jobqueue.take_over_dead);
  - a worker that stops, on SIGTERM or on WorkerFatal, first stops taking jobs, then releases the
    ones it took and did not finish (jobqueue.release) and leaves the consumer group;
  - jobs of consumers that never reported a heartbeat are reclaimed after the visibility timeout;
  - jobs Redis still has pending for this worker that it no longer works on (a finish that failed while
    Redis was unreachable, a Redis restarted from an AOF that lost its last acknowledgements) are given
    back by the heartbeat thread (jobqueue.release_orphans) and taken over at once.
A live worker's jobs are never taken, however long a batch takes: its heartbeat keeps it alive.
A job with a transient error (an unreachable URL) stays pending and is retried; a job delivered
more than `max_deliveries` times (it failed, or crashed workers, every time) is dead-lettered.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import queue as stdqueue
from concurrent.futures import BrokenExecutor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc
from google.protobuf import json_format
import numpy as np
import redis

from prometheus_client import Counter, Histogram

from clipsearch.connection import Connection
from clipsearch.v1 import index_service_pb2 as index_pb
from clipsearch.v1 import index_service_pb2_grpc as index_grpc
from clipsearch.v1 import types_pb2

from clipsearch_core import jobqueue
from clipsearch_core.model import ClipEncoder, ModelSpec
from clipsearch_core.images import ImageLoadError, LoadLimits, decoded
from clipsearch_core.jobqueue import Job, Keys

from .decode import DecodeContext, Item, Prepared, make_pool, prepare_chunk, thumbnail_of
from .thumbs import ThumbnailSpec, thumbnail_from_array

__all__ = ["Worker", "WorkerConfig", "WorkerFatal", "default_consumer_name"]

log = logging.getLogger(__name__)

IMAGES = Counter("clipsearch_worker_images_total", "Images brought to an end by this worker", ["outcome"])
FAILURES = Counter("clipsearch_worker_failures_total", "Images failed, by kind of reason", ["reason"])
BATCH_SECONDS = Histogram("clipsearch_worker_batch_seconds", "Time to decode, encode and push one batch",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ENCODE_SECONDS = Histogram("clipsearch_worker_encode_seconds", "Model forward time of one batch",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
# Where a batch's time goes, one stage after another: waiting for the decode pool's results (collect),
# decoding on the device (device_decode), the model (encode, also ENCODE_SECONDS), UpsertVectors until the
# server answers (push), and the acknowledgement script (finish). The first three run on the main thread;
# push and finish on the pusher thread when decode_overlap is on (beside the next batch's stages), and with
# --device-decode collect and device_decode on the device-decode thread (beside the model's pass).
STAGE_SECONDS = Histogram("clipsearch_worker_stage_seconds", "Time of one batch, by stage", ["stage"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

_REASON_KINDS = (
    ("gave up", "gave_up"),
    ("outside the allowed roots", "forbidden_path"),
    ("refused to fetch", "forbidden_address"),
    ("cannot fetch", "fetch"),
    ("cannot read", "read"),
    ("over the limit", "too_large"),
    ("decompression bomb", "too_large"),
    ("empty", "empty"),
    ("cannot decode", "decode"),
    ("server refused", "refused"),
    ("the model gave this image a vector", "bad_vector"),
)


def reason_kind(reason: str) -> str:
    """A small fixed label for a failure reason (metrics must not have one label per message)."""
    return next((kind for text, kind in _REASON_KINDS if text in reason), "other")


_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
# Refusals that are not about a record and may pass when the push is sent again (an unexpected error in
# the server, a stream reset or cancelled on the way): sent again up to _REFUSAL_RETRIES times (upserts are
# idempotent) before every image of the push fails. One such error once failed a whole batch of 256.
_RETRIED_REFUSALS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
                     grpc.StatusCode.ABORTED)
_REFUSAL_RETRIES = 3
_STOPPED = "stopped"  # _send's result when the worker stops before the server answered


def _usable(vectors: np.ndarray) -> np.ndarray:
    """Which rows the server can index, by its own test: finite as float32, with a finite, non-zero norm."""
    as_sent = np.asarray(vectors).astype("<f4")
    finite = np.isfinite(as_sent).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(np.where(finite[:, None], as_sent, 0), axis=1)
    return finite & np.isfinite(norms) & (norms > 0)


def default_consumer_name() -> str:
    """host-pid-random: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything an encoder worker needs (each field is the option of the same name, see
    `clipsearch_core.settings`).

    connection: how to reach the search server (address, token, TLS), where vectors are pushed.
    batch_size: images per forward pass (and per Redis read).
    decode_threads: threads that read, decode and preprocess images beside the model (decode_processes 0).
    decode_processes: processes that do so instead (0: the threads), so that decoding uses more cores.
    decode_overlap: "on": the next batch is read and decoded, and the last one pushed, while the model encodes
        this one; "off": only between forward passes (decoding then has every core); "auto": on unless the
        model runs on the CPU with at least one thread per core (`model_threads`), where work beside it only
        slows it down.
    model_threads: the model's CPU threads (torch's default is one per core).
    visibility_timeout_s: a job pending this long with a worker that stopped heartbeating is taken over.
    worker_ttl_s: a worker whose heartbeat is older than this is dead: its jobs are taken over at once.
    """

    redis_url: str
    redis_prefix: str
    connection: Connection
    model: ModelSpec
    batch_size: int
    decode_threads: int
    image_limits: LoadLimits
    consumer: str
    visibility_timeout_s: float
    worker_ttl_s: float
    max_deliveries: int
    heartbeat_file: str  # touched on every loop turn, for container health checks
    device_decode: bool  # decode JPEGs on the model's device (nvJPEG on CUDA)
    decode_stream: bool = True  # ... on a CUDA stream of the decoding thread's own (ClipEncoder.own_decode_stream)
    decode_processes: int = 0
    thumbnail: ThumbnailSpec = ThumbnailSpec()  # the thumbnail sent with each vector (size 0: none)
    decode_overlap: str = "auto"
    model_threads: int = 0
    block_ms: int = 1000
    push_timeout_s: float = 60.0

    @classmethod
    def from_args(cls, args: Any) -> "WorkerConfig":
        """From a command line parsed by `settings.parse("worker", ...)`."""
        return cls(
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            connection=Connection.from_env(args.server, token=args.auth_token or None, tls_ca=args.tls_ca or None,
                                           tls_cert=args.tls_client_cert or None, tls_key=args.tls_client_key or None),
            model=ModelSpec.from_args(args),
            batch_size=args.batch_size,
            decode_threads=args.decode_threads,
            image_limits=LoadLimits.from_args(args),
            consumer=args.consumer or default_consumer_name(),
            visibility_timeout_s=args.visibility_timeout,
            worker_ttl_s=args.worker_ttl,
            max_deliveries=args.max_deliveries,
            heartbeat_file=args.heartbeat_file,
            device_decode=args.device_decode,
            decode_stream=args.decode_stream == "on",
            decode_processes=args.decode_processes,
            thumbnail=ThumbnailSpec.from_args(args),
            decode_overlap=args.decode_overlap,
            model_threads=args.threads or _cores(),
        )

    def overlaps(self, device: str) -> bool:
        """Whether decoding runs beside the model (see decode_overlap)."""
        if self.decode_overlap != "auto":
            return self.decode_overlap == "on"
        return not (device == "cpu" and self.model_threads >= _cores())


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_PREFETCH = 1  # batches read and decoding while the model works on the current one (decode_overlap)


@dataclass
class _Batch:
    """Jobs taken from the queue, with their decoding under way in chunks (exhausted jobs in none)."""

    jobs: list[Job]
    chunks: list[tuple[list[Job], Future]]
    started: float
    prepared: "list[tuple[Job, Prepared]] | None" = None  # its images ready for the model (`Worker._prepare`)
    error: BaseException | None = None  # what preparing it ahead raised, for the main loop to raise


@dataclass
class _Encoded:
    """A batch after the model: the jobs to push with their vectors and thumbnails (bytes, or a Future of
    them when the pool is still encoding a device-scaled one), and the outcomes already known (failed
    images, jobs that gave up)."""

    jobs: list[Job]
    vectors: Any
    thumbs: "list[bytes | None | Future[bytes | None]]"
    outcomes: list[tuple[Job, str | None]]


def _wake_on_failure(batches: "stdqueue.Queue[_Batch | None]", push: "Future[None]") -> None:
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


def _typed_fields(text: str) -> dict[str, types_pb2.Value]:
    """A job's typed fields (proto3 JSON of each Value, as the server queued them) as protobuf."""
    if not text:
        return {}
    return {key: json_format.ParseDict(item, types_pb2.Value()) for key, item in json.loads(text).items()}


class WorkerFatal(Exception):
    """The worker cannot do useful work (e.g. its model differs from the server's); it should exit."""


class Worker:
    """One encoder worker process's loop."""

    def __init__(self, config: WorkerConfig, encoder: ClipEncoder) -> None:
        self.config = config
        self.encoder = encoder
        encoder.own_decode_stream = config.decode_stream
        self.keys = Keys(config.redis_prefix)
        self.redis = jobqueue.connect(config.redis_url)
        self._reader = jobqueue.connect(config.redis_url, single_connection=True)  # the feeder's blocking reads
        self._reader_id: int | None = None  # its connection's id, for interrupt_read
        self._interruptible = True  # False once Redis refused CLIENT ID (an ACL without it)
        self._channel = config.connection.channel()
        self._metadata = config.connection.metadata()
        self._index = index_grpc.IndexServiceStub(self._channel)
        self._decode = DecodeContext(config.image_limits, encoder.image_size, encoder.cpu_transform(),
                                     config.device_decode, config.thumbnail)
        self._pool = make_pool(self._decode, config.decode_threads, config.decode_processes)
        self._lanes = max(1, config.decode_processes or config.decode_threads)  # chunks decoded at once
        self._model = types_pb2.ModelInfo(name=encoder.identity, dim=encoder.dim)
        self._last_reclaim = 0.0
        self._last_take_over = 0.0
        self.processed = 0
        self._in_flight: set[str] = set()  # entry ids of the jobs taken and not yet finished
        self._in_flight_lock = threading.Lock()
        self._closed = threading.Event()
        self._abort = threading.Event()  # set when run() fails: pushes stop retrying
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        """Keeps this worker's in-flight jobs from looking abandoned, however long a batch takes, and
        reports the worker as alive (for `clipsearch status`)."""
        interval = max(0.2, min(5.0, self.config.visibility_timeout_s / 3, self.config.worker_ttl_s / 3))
        orphan_idle_ms = 2000  # far longer than a job just read or claimed takes to reach _in_flight
        while True:
            wait = interval
            try:
                with self._in_flight_lock:  # held, so that no job is claimed back after its release
                    jobqueue.keep_alive(self.redis, self.keys, self.config.consumer, list(self._in_flight))
                    # Jobs Redis says we hold but we do not work on (a finish lost while Redis was away or
                    # restarting): given back at once, not after the visibility timeout (jobqueue's docstring).
                    orphans = jobqueue.release_orphans(self.redis, self.keys, self.config.consumer,
                                                       list(self._in_flight), orphan_idle_ms)
                if orphans:
                    log.warning("gave back %d jobs Redis still had pending for this worker, which no longer "
                                "works on them (Redis unreachable or restarted); they are redone", len(orphans))
                jobqueue.report_worker(self.redis, self.keys, jobqueue.WorkerInfo(
                    self.config.consumer, 0, self.processed, self.encoder.device, self.encoder.identity))
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
                wait = min(interval, 1.0)  # Redis back: beat (and give orphans back) soon, not a whole interval later
            if self._closed.wait(wait):
                return

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
        batches: "stdqueue.Queue[_Batch | None]" = stdqueue.Queue()  # ready for the model
        taken: "stdqueue.Queue[_Batch | None]" = stdqueue.Queue() if ahead else batches  # the feeder's
        slots = threading.Semaphore(_PREFETCH + 2 + (1 if ahead else 0) if overlap else 1)
        halt = threading.Event()  # stops the feeder: set on `stop` or on a fatal error
        feeder = threading.Thread(target=self._feed, args=(stop, halt, taken, slots), name="feeder", daemon=True)
        feeder.start()
        threading.Thread(target=self._interrupt_reads, args=(stop, halt, feeder), name="stop-watch", daemon=True).start()
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
                        pushing, previous = None, pushing
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
            self._release()

    def _done(self, batch: "_Batch", slots: threading.Semaphore) -> None:
        self._forget(batch.jobs)
        slots.release()

    def _release(self) -> None:
        """Gives back the jobs this worker took and did not finish (prefetched, interrupted, or left by a
        fatal error) so that live workers take them at once, and leaves the consumer group. The
        heartbeat no longer touches them: `_in_flight` is cleared under its lock first."""
        with self._in_flight_lock:
            self._in_flight.clear()
            try:
                released = jobqueue.release(self.redis, self.keys, self.config.consumer)
            except redis.RedisError as exc:
                log.warning("could not release this worker's jobs (%s); others take them when its heartbeat "
                            "is older than %.0fs", exc, self.config.worker_ttl_s)
                return
        if released:
            log.info("released %d unfinished jobs to other workers", released)

    def _feed(self, stop: threading.Event, halt: threading.Event, batches: "stdqueue.Queue[_Batch | None]",
              slots: threading.Semaphore) -> None:
        ready = False
        try:
            while not stop.is_set() and not halt.is_set():
                if self.config.heartbeat_file:
                    Path(self.config.heartbeat_file).touch()
                if not slots.acquire(timeout=0.5):
                    continue
                try:
                    if not ready:
                        jobqueue.ensure_group(self.redis, self.keys)
                        ready = True
                    batch = self._start_batch()
                except redis.RedisError as exc:
                    batch, ready = None, False
                    log.warning("Redis unavailable (%s); retrying in 1s", exc)
                    stop.wait(1.0)
                if batch is None:
                    slots.release()
                elif halt.is_set():
                    self._drop(batch)
                else:
                    batches.put(batch)
        finally:
            batches.put(None)

    def _prepare_ahead(self, halt: threading.Event, taken: "stdqueue.Queue[_Batch | None]",
                       batches: "stdqueue.Queue[_Batch | None]") -> None:
        """The device-decode thread: prepares each batch the feeder took, in order, while the main thread
        runs the model on the one before; a batch whose preparation raised carries the exception to the
        main loop, which raises it. Once the main loop has stopped (`halt`), batches are dropped, not
        prepared: run() releases their jobs."""
        try:
            while (batch := taken.get()) is not None:
                if halt.is_set():
                    self._drop(batch)
                    continue
                try:
                    self._prepare(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the main loop, raised there
                    batch.error = exc
                batches.put(batch)
        finally:
            batches.put(None)

    def _drop(self, batch: "_Batch") -> None:
        """Lets go of a batch taken after the main loop stopped: run() releases its jobs."""
        self._forget(batch.jobs)
        for _, future in batch.chunks:
            future.cancel()

    def _prepare(self, batch: "_Batch") -> None:
        """Collects the decode pool's results for a batch and decodes its JPEGs on the device."""
        with STAGE_SECONDS.labels("collect").time():
            prepared = self._collect(batch)
        with STAGE_SECONDS.labels("device_decode").time():
            self._decode_on_device(prepared)
        batch.prepared = prepared

    def _start_batch(self) -> "_Batch | None":
        """Takes the next jobs and starts reading and decoding them in the pool."""
        jobs = self._next_jobs()
        if not jobs:
            return None
        with self._in_flight_lock:
            self._in_flight.update(job.entry_id for job in jobs)
        fresh = [job for job in jobs if job.attempts <= self.config.max_deliveries]
        try:
            blobs = jobqueue.load_blobs(self.redis, self.keys, fresh)
        except redis.RedisError:
            self._forget(jobs)  # not ours to keep alive any more: let them be reclaimed
            raise
        items = [Item(job.id, job.uri, job.has_blob, blob) for job, blob in zip(fresh, blobs)]
        size = max(1, -(-len(items) // (2 * self._lanes)))  # two chunks per lane: the lanes finish together
        context = None if self.config.decode_processes else self._decode  # processes have it already
        chunks = [(fresh[start:start + size], self._submit(prepare_chunk, items[start:start + size], context))
                  for start in range(0, len(items), size)]
        return _Batch(jobs, chunks, time.perf_counter())

    def _forget(self, jobs: Sequence[Job]) -> None:
        with self._in_flight_lock:
            self._in_flight.difference_update(job.entry_id for job in jobs)

    def _next_jobs(self) -> list[Job]:
        now = time.monotonic()
        if now - self._last_take_over >= min(5.0, self.config.worker_ttl_s / 3):
            self._last_take_over = now
            taken = jobqueue.take_over_dead(
                self.redis, self.keys, self.config.consumer, int(self.config.worker_ttl_s * 1000),
                self.config.batch_size,
            )
            if taken:
                log.info("took over %d jobs of stopped or dead workers", len(taken))
                if len(taken) >= self.config.batch_size:
                    self._last_take_over = 0.0  # there may be more: look again for the next batch
                return taken
        if now - self._last_reclaim >= min(30.0, self.config.visibility_timeout_s / 2):
            self._last_reclaim = now
            stale = jobqueue.reclaim_stale(
                self.redis, self.keys, self.config.consumer,
                int(self.config.visibility_timeout_s * 1000), self.config.batch_size,
            )
            if stale:
                log.info("reclaimed %d jobs abandoned by other workers", len(stale))
                return stale
        if self._interruptible:
            try:
                self._reader_id = jobqueue.connection_id(self._reader)  # asked each time: a reconnect changes it
            except redis.ResponseError as exc:  # CLIENT denied (an ACL): reads go on, a stop waits them out
                log.info("the queue's blocking reads cannot be interrupted on stop (%s)", exc)
                self._interruptible, self._reader_id = False, None
        return jobqueue.read_jobs(self._reader, self.keys, self.config.consumer, self.config.batch_size,
                                  self.config.block_ms)

    def _interrupt_reads(self, stop: threading.Event, halt: threading.Event, feeder: threading.Thread) -> None:
        """The stop watcher: once `stop` is set (or the loop ended on an error: `halt`), ends the feeder's
        blocking read at once, and again until the feeder is gone (a read that began just after an
        interrupt), so that a stop does not wait out `block_ms`."""
        while not stop.wait(0.2) and not halt.is_set():
            pass
        while feeder.is_alive():
            reader = self._reader_id
            if self._interruptible and reader is not None:
                try:
                    jobqueue.interrupt_read(self.redis, reader)
                except redis.ResponseError as exc:  # CLIENT UNBLOCK denied (an ACL): the read runs out instead
                    log.info("the queue's blocking reads cannot be interrupted on stop (%s)", exc)
                    self._interruptible = False
                except redis.RedisError:
                    pass  # Redis is gone: the read fails on its own
            feeder.join(0.05)

    def _encode_batch(self, batch: "_Batch") -> "_Encoded":
        """The batch's decoded images through the model, and the outcomes known before the push."""
        outcomes: list[tuple[Job, str | None]] = []
        chunked = {job.entry_id for jobs, _ in batch.chunks for job in jobs}
        exhausted = [job for job in batch.jobs if job.entry_id not in chunked]
        for job, last in zip(exhausted, jobqueue.last_errors(self.redis, self.keys, exhausted)):
            outcomes.append((job, f"gave up after {job.attempts - 1} attempts: "
                                  f"{last or 'a worker crashed or stalled on this image each time'}"))
        if batch.prepared is None:  # not prepared ahead on the device-decode thread
            self._prepare(batch)
        prepared = batch.prepared or []
        good: list[tuple[Job, Any, bytes | None]] = []
        retried: list[tuple[Job, str]] = []
        for job, (kind, value, reason, thumb) in prepared:
            if kind == "input":
                good.append((job, value, thumb))
            elif kind == "transient":
                retried.append((job, reason))
                log.info("image %s will be retried (attempt %d): %s", job.id, job.attempts, reason)
            else:  # "failed" (a kind left unprepared would be a bug: it fails with a reason, never silently)
                outcomes.append((job, reason or f"the image was not prepared for the model ({kind})"))
        jobqueue.record_transient_errors(self.redis, self.keys, retried)
        vectors = None
        if good:
            with ENCODE_SECONDS.time(), STAGE_SECONDS.labels("encode").time():
                vectors = self.encoder.encode_images([tensor for _, tensor, _ in good])
            usable = _usable(vectors)
            if not usable.all():  # the server would refuse the whole push: these images fail alone
                outcomes.extend((job, "the model gave this image a vector with NaN, infinite or only zero values "
                                      "(an overflow in reduced precision?)") for (job, _, _), ok in zip(good, usable) if not ok)
                good, vectors = [g for g, ok in zip(good, usable) if ok], vectors[usable]
        return _Encoded([job for job, _, _ in good], vectors, [thumb for _, _, thumb in good], outcomes)

    def _complete(self, batch: "_Batch", encoded: "_Encoded", stop: threading.Event,
                  slots: threading.Semaphore) -> None:
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
                jobqueue.finish(self.redis, self.keys, outcomes)
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

    def _collect(self, batch: "_Batch") -> list[tuple[Job, Prepared]]:
        """Each chunk's results, in order. A chunk whose decode process died (a crash in a decoder)
        is retried later like a transient error (dead-lettered after max_deliveries), and the pool is
        started again."""
        prepared: list[tuple[Job, Prepared]] = []
        for jobs, future in batch.chunks:
            try:
                prepared.extend(zip(jobs, future.result()))
            except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, or a result that cannot be unpickled
                log.warning("a decode process failed (%s: %s); its %d images will be retried",
                            type(exc).__name__, exc, len(jobs))
                reason = f"the decode process stopped while preparing this image or its chunk ({type(exc).__name__})"
                prepared.extend((job, ("transient", None, reason, None)) for job in jobs)
                self._restart_pool()
        return prepared

    def _restart_pool(self) -> None:
        broken = self._pool
        if getattr(broken, "_broken", False) and not self._closed.is_set():  # none after close()
            self._pool = make_pool(self._decode, self.config.decode_threads, self.config.decode_processes)
            broken.shutdown(wait=False, cancel_futures=True)

    def _decode_on_device(self, prepared: list[tuple[Job, Prepared]]) -> None:
        """Replaces "jpeg" entries by tensors decoded together on the device (one by one with PIL if
        the batch decode fails, so one odd JPEG cannot fail its neighbours)."""
        pending = [i for i, (_, (kind, _, _, _)) in enumerate(prepared) if kind == "jpeg"]
        if not pending:
            return
        spec = self.config.thumbnail
        try:
            tensors, smalls = self.encoder.decode_jpegs_and_thumbnails([prepared[i][1][1] for i in pending],
                                                                       thumbnail_side=spec.size)
        except (RuntimeError, ValueError) as exc:
            log.info("batch JPEG decode on %s failed (%s); decoding one by one", self.encoder.device, exc)
            for i in pending:
                prepared[i] = (prepared[i][0], self._decode_with_pil(bytes(prepared[i][1][1])))
            return
        for i, tensor, small in zip(pending, tensors, smalls):  # thumbnails encoded in the pool meanwhile
            prepared[i] = (prepared[i][0], ("input", tensor, "", None if small is None else self._submit(
                thumbnail_from_array, small, spec)))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """fn(*args) in the decode pool; a pool broken by a crashed decode process gives a failed Future
        (its images are retried, or their thumbnails left out) until `_collect` starts a new pool."""
        try:
            return self._pool.submit(fn, *args)
        except BrokenExecutor as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def _decode_with_pil(self, data: bytes) -> Prepared:
        try:
            with decoded(data, self.config.image_limits, draft_size=self.encoder.image_size) as image:
                return "input", self.encoder.preprocess_uint8(image), "", thumbnail_of(data, image, self._decode)
        except ImageLoadError as exc:
            return "failed", None, str(exc), None

    def _push(self, jobs: Sequence[Job], vectors: np.ndarray, thumbs: Sequence[bytes | None],
              stop: threading.Event) -> list[str | None] | None:
        """Upserts vectors (with thumbnails) on the server. Returns each job's failure reason (None:
        indexed), or None if interrupted (`stop`, or the main loop failing: `_abort`). A push the server
        refuses as INVALID_ARGUMENT (a record it will not take) is split in halves and each pushed again,
        so that only the images it refuses fail, not their neighbours in the batch: 1 + 2 log2(n) calls
        for one bad image (upserts are idempotent: a half pushed before an interruption is pushed again).
        Other refusals are not about one record: INTERNAL, UNKNOWN, CANCELLED and ABORTED are sent again
        a few times (`_send`), then the whole push fails, as do the rest at once."""
        if stop.is_set() or self._abort.is_set():
            return None
        refused = self._send(jobs, vectors, thumbs, stop)
        if refused == _STOPPED:
            return None
        if refused is None:
            return [None] * len(jobs)
        code, reason = refused
        if code != grpc.StatusCode.INVALID_ARGUMENT or len(jobs) == 1:
            return [reason] * len(jobs)
        log.info("the server refused a push of %d images (%s); pushing its halves apart", len(jobs), reason)
        half = len(jobs) // 2
        first = self._push(jobs[:half], vectors[:half], thumbs[:half], stop)
        second = None if first is None else self._push(jobs[half:], vectors[half:], thumbs[half:], stop)
        return None if first is None or second is None else [*first, *second]

    def _send(self, jobs: Sequence[Job], vectors: np.ndarray, thumbs: Sequence[bytes | None],
              stop: threading.Event) -> "tuple[grpc.StatusCode, str] | str | None":
        """One UpsertVectors call, retried while the server is unavailable or busy, and up to
        _REFUSAL_RETRIES times after a refusal that may pass (_RETRIED_REFUSALS). Returns None on
        success, _STOPPED if interrupted, or the status and reason of the server's refusal."""
        mime = self.config.thumbnail.mime_type
        request = index_pb.UpsertVectorsRequest(
            model=self._model,
            records=[
                index_pb.VectorRecord(id=job.id, vector=vec.astype("<f4").tobytes(), uri=job.uri, metadata=job.metadata,
                                      submitted_at_ms=int(job.entry_id.split("-")[0] or 0),  # stream id ms = submission time
                                      fields=_typed_fields(job.fields_json),
                                      thumbnail=types_pb2.Thumbnail(data=thumb, mime_type=mime) if thumb else None)
                for job, vec, thumb in zip(jobs, vectors, thumbs)
            ],
        )
        delay, refusals = 0.2, 0
        while True:
            try:
                self._index.UpsertVectors(request, timeout=self.config.push_timeout_s, metadata=self._metadata)
                return None
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED,
                            grpc.StatusCode.PERMISSION_DENIED):  # misconfigured: stop, do not fail every job
                    raise WorkerFatal(f"{code.name}: {exc.details()}") from exc
                if code in _RETRIED_REFUSALS and refusals < _REFUSAL_RETRIES:
                    refusals += 1
                    log.warning("push of %d images refused (%s: %s); sending it again in %.1fs (%d of %d)",
                                len(jobs), code.name, exc.details(), delay, refusals, _REFUSAL_RETRIES)
                elif code not in _RETRYABLE:
                    tries = f" (sent {refusals + 1} times)" if refusals else ""
                    return code, f"the server refused the vector: {code.name}: {exc.details()}{tries}"
                else:
                    log.warning("push failed (%s: %s); retrying in %.1fs", code.name, exc.details(), delay)
            if stop.wait(delay) or self._abort.is_set():
                return _STOPPED
            delay = min(delay * 2, 5.0)

    def close(self) -> None:
        self._closed.set()
        self._heartbeat.join(timeout=5)
        try:
            jobqueue.remove_worker(self.redis, self.keys, self.config.consumer)
        except redis.RedisError:
            pass
        self._pool.shutdown(wait=True)
        self._channel.close()
        self._reader.close()
        self.redis.close()
