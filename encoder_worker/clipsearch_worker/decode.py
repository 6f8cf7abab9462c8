"""Reading, decoding and preprocessing a worker's images, in its threads or in decode processes.

`prepare_chunk` turns a chunk of jobs (with their inline bytes) into model inputs or failure reasons.
It runs in a thread pool (`--decode-processes 0`) or in a pool of decode processes, so that decoding
spreads over cores instead of contending for one GIL; a chunk (not an image) is one task, so the
main thread's cost of handing work out and collecting it is paid per chunk. Each image's thumbnail
(thumbs.py) is made here too, from the same decoded image.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from clipsearch_core import heap
from clipsearch_core.images import ImageLoadError, LoadLimits, check_header, decode_image, decoded, is_jpeg, read_uri

from .thumbs import ThumbnailSpec, make_thumbnail

__all__ = ["DecodeContext", "Prepared", "make_pool", "prepare_chunk", "thumbnail_of"]

log = logging.getLogger(__name__)

# What one image became: ("input", model input, "", thumbnail) | ("jpeg", bytes, "", None) to decode (and
# scale its thumbnail) on the device | ("transient", None, reason, None): retry later | ("failed", None, reason, None).
# thumbnail: the encoded thumbnail bytes, or None when thumbnails are off (after a device decode: a Future of
# them, encoded in the pool while the batch goes through the model).
Prepared = tuple[str, Any, str, "bytes | None | Future[bytes | None]"]


@dataclass(frozen=True)
class DecodeContext:
    """What decoding needs, picklable (sent once to each decode process)."""

    limits: LoadLimits
    draft_size: int
    transform: Callable[[Any], Any]  # decoded RGB image -> model input (ClipEncoder.cpu_transform)
    device_decode: bool
    thumbnail: ThumbnailSpec = ThumbnailSpec(size=0)


def thumbnail_of(data: bytes, image: Any, context: DecodeContext) -> bytes | None:
    """The thumbnail of an image (None when off), from `image` (decoded for the model) when it is large
    enough, else from a JPEG draft decode at the thumbnail's size. The model's decode is never changed
    for the thumbnail's sake: vectors stay those the server computes for the same image as a query.
    (With `--device-decode` the device scales the thumbnail instead: thumbs.thumbnail_from_array.)"""
    spec = context.thumbnail
    if not spec.enabled:
        return None
    if max(image.size) < spec.size and min(image.size) >= context.draft_size and is_jpeg(data):
        # draft-reduced for the model (else both sides would not both be >= its input): decode it again
        image = decode_image(data, context.limits, longest_side=spec.size)
    return make_thumbnail(image, spec)


@dataclass(frozen=True)
class Item:
    """One job to prepare: its id (for logs), where its bytes are, and the inline bytes if any."""

    job_id: str
    uri: str
    has_blob: bool
    blob: bytes | None


_CONTEXT: DecodeContext | None = None  # set in each decode process by _init


def _init(context: DecodeContext) -> None:
    global _CONTEXT
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker process handles Ctrl-C and stops the pool
    heap.return_large_blocks()  # as in the worker: a decoded image's memory goes back when freed
    _CONTEXT = context


def make_pool(context: DecodeContext, threads: int, processes: int) -> Executor:
    """`processes` decode processes (spawned: no state inherited from the model's threads), or
    `threads` threads in this process when processes is 0."""
    if processes > 0:
        pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init, initargs=(context,))
        _start(pool, processes)
        return pool
    return ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")


def _start(pool: ProcessPoolExecutor, processes: int, timeout_s: float = 120.0) -> None:
    """Starts every decode process now (each imports its libraries, about a second of CPU), so that the
    first batches do not wait for them; bounded: a pool still short of processes starts them on demand."""
    started = time.monotonic()
    seen: set[int] = set()
    try:
        while len(seen) < processes and time.monotonic() - started < timeout_s:
            seen.update(f.result(timeout=timeout_s) for f in [pool.submit(_pid) for _ in range(processes)])
    except Exception as exc:  # noqa: BLE001 - a pool that broke is restarted when a chunk finds it broken
        log.warning("decode processes did not start (%s: %s)", type(exc).__name__, exc)
        return
    log.info("%d decode processes started in %.1fs", len(seen), time.monotonic() - started)


def _pid() -> int:
    time.sleep(0.05)  # long enough that the other processes take the other calls
    return os.getpid()


def prepare_chunk(items: Sequence[Item], context: DecodeContext | None = None) -> list[Prepared]:
    """Prepares each item; never raises for a bad image (its reason is returned instead)."""
    context = context or _CONTEXT
    assert context is not None, "prepare_chunk called in a process without a DecodeContext"
    return [_prepare(item, context) for item in items]


def _prepare(item: Item, context: DecodeContext) -> Prepared:
    try:
        if item.has_blob:
            if item.blob is None:
                return "failed", None, "the image bytes are no longer in the queue (expired or deleted)", None
            data = item.blob
        else:
            data = read_uri(item.uri, context.limits)
        if context.device_decode and is_jpeg(data):
            check_header(data, context.limits)
            return "jpeg", data, "", None  # decoded on the device, the thumbnail scaled there too
        with decoded(data, context.limits, draft_size=context.draft_size) as image:  # within the decode budget
            return "input", context.transform(image), "", thumbnail_of(data, image, context)
    except ImageLoadError as exc:
        return ("transient" if exc.transient else "failed"), None, str(exc), None
    except Exception as exc:  # noqa: BLE001 - a bad image must never kill the worker
        log.exception("unexpected error preparing image %s", item.job_id)
        return "failed", None, f"unexpected error: {type(exc).__name__}: {exc}", None
