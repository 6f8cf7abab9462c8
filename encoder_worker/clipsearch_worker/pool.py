"""The worker's side of decoding (decode.py is what runs in the pool): `DecodePool` starts a batch's
decoding in chunks, collects the chunks' results (a chunk whose decode process died is retried later, and
the pool started again), and decodes a batch's JPEGs together on the model's device (nvJPEG on CUDA)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import BrokenExecutor, Future
from typing import Any, Callable, Sequence

from clipsearch_core.images import ImageLoadError, decoded
from clipsearch_core.jobqueue import Job
from clipsearch_core.model import ClipEncoder

from .batch import Batch
from .config import WorkerConfig
from .decode import DecodeContext, Item, Prepared, make_pool, prepare_chunk, thumbnail_of
from .thumbs import thumbnail_from_array

__all__ = ["DecodePool"]

log = logging.getLogger(__name__)


class DecodePool:
    """The decode threads or processes of one worker (`decode_threads`, `decode_processes`).

    `closed`: set when the worker closes; a broken pool is then not started again."""

    def __init__(self, config: WorkerConfig, encoder: ClipEncoder, closed: threading.Event) -> None:
        self.config = config
        self.encoder = encoder
        self._closed = closed
        self._context = DecodeContext(config.image_limits, encoder.image_size, encoder.cpu_transform(),
                                      config.device_decode, config.thumbnail)
        self._pool = make_pool(self._context, config.decode_threads, config.decode_processes)
        self._lanes = max(1, config.decode_processes or config.decode_threads)  # chunks decoded at once

    def start(self, jobs: Sequence[Job], blobs: Sequence[bytes | None]) -> list[tuple[list[Job], Future]]:
        """Starts reading and decoding these jobs (with their inline bytes) in chunks; each chunk's Future
        gives one Prepared per job."""
        jobs = list(jobs)
        items = [Item(job.id, job.uri, job.has_blob, blob) for job, blob in zip(jobs, blobs)]
        size = max(1, -(-len(items) // (2 * self._lanes)))  # two chunks per lane: the lanes finish together
        context = None if self.config.decode_processes else self._context  # processes have it already
        return [(jobs[start:start + size], self.submit(prepare_chunk, items[start:start + size], context))
                for start in range(0, len(items), size)]

    def collect(self, batch: Batch) -> list[tuple[Job, Prepared]]:
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
                self._restart()
        return prepared

    def _restart(self) -> None:
        broken = self._pool
        if getattr(broken, "_broken", False) and not self._closed.is_set():  # none after close()
            self._pool = make_pool(self._context, self.config.decode_threads, self.config.decode_processes)
            broken.shutdown(wait=False, cancel_futures=True)

    def decode_on_device(self, prepared: list[tuple[Job, Prepared]]) -> None:
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
            prepared[i] = (prepared[i][0], ("input", tensor, "", None if small is None else self.submit(
                thumbnail_from_array, small, spec)))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """fn(*args) in the decode pool; a pool broken by a crashed decode process gives a failed Future
        (its images are retried, or their thumbnails left out) until `collect` starts a new pool."""
        try:
            return self._pool.submit(fn, *args)
        except BrokenExecutor as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def _decode_with_pil(self, data: bytes) -> Prepared:
        try:
            with decoded(data, self.config.image_limits, draft_size=self.encoder.image_size) as image:
                return "input", self.encoder.preprocess_uint8(image), "", thumbnail_of(data, image, self._context)
        except ImageLoadError as exc:
            return "failed", None, str(exc), None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
