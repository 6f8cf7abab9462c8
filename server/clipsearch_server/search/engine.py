"""The search engine: query encoding with the CLIP model plus planned searches (query.py), off the event loop.

The gRPC layer calls these coroutines with validated arguments. Model and FAISS work is blocking,
so it runs in a thread pool; the asyncio loop only routes requests. With a shared PostgreSQL store
(`replica` set, replication/follower.py) writes go to the store and searches may first wait for a position.

Records (RecordService): reads by id, scroll pages in id order, counts; field updates and deletes by ids
or by filter. A filter's matches are taken once, when the call starts, and written in chunks of
WRITE_CHUNK images, each chunk one store transaction on the write thread, so searches and other writes go
on between chunks; an interrupted call leaves whole chunks done or not, and the same call again finishes it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from clipsearch_core.errors import FailedPrecondition, Unavailable
from clipsearch_core.images import LoadLimits, decoded, read_uri
from clipsearch_core.model import ClipEncoder
from clipsearch_core.settings import default
from clipsearch_server.collection.collection import Collection, CollectionStats
from clipsearch_server.replication.follower import StoreFollower
from clipsearch_server.storage import fields as typed
from clipsearch_server.storage.records import ImageRecord, StoredRecord

from . import query
from .batching import MicroBatcher, TextBatcher
from .filters import Filter
from .query import Page, Query

__all__ = ["WRITE_CHUNK", "Engine", "EngineSlot", "ReplicationStats"]

T = TypeVar("T")
WRITE_CHUNK = 1000  # images per transaction of an update or delete by filter


@dataclass(frozen=True)
class ReplicationStats:
    """Where this server stands against its store (positions are 0 with SQLite)."""

    store_kind: str
    applied_position: int
    store_position: int
    lag_s: float


class Engine:
    """Encodes queries and searches the collection."""

    replica: StoreFollower | None = None  # set when the store is a shared PostgreSQL database
    read_wait_s: float = 5.0  # how long a search waits for a min_position

    def __init__(self, encoder: ClipEncoder, collection: Collection, limits: LoadLimits, workers: int = 4,
                 text_batch: int = default("--text-batch"), image_batch: int = default("--image-batch"),
                 cache_size: int = 4096) -> None:
        self.encoder = encoder
        self.collection = collection
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
        # Image URLs are read in threads of their own: a slow host (each fetch bounded by --http-timeout)
        # must not hold the threads that encode and search for every other query.
        self._fetches = ThreadPoolExecutor(max_workers=32, thread_name_prefix="engine-fetch")
        # Query images are decoded in threads of their own too: a decode may wait for the process's decode
        # budget (clipsearch_core.images), and a few large images must not stall text searches meanwhile.
        self._decodes = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine-decode")
        self._labels = query.LabelCache()  # filters' matching labels, per write generation
        # Writes are serialized by the collection anyway; their own thread keeps them from queueing
        # behind searches in the shared pool.
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-write")
        # Updates and deletes by filter run chunk after chunk in a thread of their own at a lower CPU priority
        # (still one writer at a time: the collection's write lock), so that on a busy machine the threads of
        # searches and of other writes run first.
        self._bulk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-bulk", initializer=_lower_priority)
        self.texts = TextBatcher(lambda texts: self._run(lambda: encoder.encode_text(texts)), text_batch,
                                 cache_size=cache_size)
        self.images: MicroBatcher[Any] = MicroBatcher(
            lambda tensors: self._run(lambda: encoder.encode_images(tensors)), image_batch)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _write(self, fn: Callable[[], T], bulk: bool = False) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._bulk if bulk else self._writes, fn)

    async def text_vector(self, text: str) -> np.ndarray:
        """The text's unit query vector (micro-batched, cached)."""
        return await self.texts.vector(text)

    async def image_vector_bytes(self, data: bytes) -> np.ndarray:
        return await self._image_vector(lambda: data)

    async def image_vector_uri(self, uri: str) -> np.ndarray:
        data = await asyncio.get_running_loop().run_in_executor(self._fetches, read_uri, uri, self.limits)
        return await self._image_vector(lambda: data)

    async def _image_vector(self, read: Callable[[], bytes]) -> np.ndarray:
        """Reads and decodes in the decode threads (concurrently with other queries), encodes in a micro-batch."""
        tensor = await asyncio.get_running_loop().run_in_executor(self._decodes, lambda: self._preprocess(read()))
        return await self.images.vector(tensor)

    def _preprocess(self, data: bytes) -> Any:
        # Within the process's decode budget, resize included. A JPEG is decoded scaled as the workers
        # decode it (draft_size), so an image's query vector is the one its worker stored.
        with decoded(data, self.limits, draft_size=self.encoder.image_size) as image:
            return self.encoder.preprocess(image)

    async def id_vector(self, image_id: str) -> np.ndarray:
        """The stored vector of an indexed image (NotFound when there is none)."""
        return await self._run(lambda: self.collection.vector_of(image_id))

    async def search(self, queries: Sequence[Query]) -> list[Page]:
        """Pages of results for query vectors (query.py: filters once per group, batched first round)."""
        return await self._run(lambda: query.run(self.collection, queries, self._labels))

    async def thumbnails(self, ids: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """id -> (thumbnail, MIME type) for those of `ids` that have one."""
        return await self._run(lambda: self.collection.store.thumbnails(ids))

    async def records(self, ids: Sequence[str], vectors: bool = False, thumbnails: bool = False
                      ) -> tuple[dict[str, StoredRecord], dict[str, tuple[bytes, str]]]:
        """The stored records among `ids` (id -> record, with its vector bytes when `vectors`) and, when
        `thumbnails`, id -> (thumbnail, MIME type) for those of them that have one."""
        store = self.collection.store

        def read() -> tuple[dict[str, StoredRecord], dict[str, tuple[bytes, str]]]:
            found = store.records(ids, vectors)
            return found, store.thumbnails(list(found)) if thumbnails and found else {}

        return await self._run(read)

    async def count(self, flt: Filter | None = None) -> int:
        """The exact number of live images, or of those matching a checked filter (the planner's label
        evaluation and cache, as searches use it)."""
        if flt is None:
            return await self._run(self.collection.store.count)
        return await self._run(lambda: len(self._labels.matching(self.collection, flt)))

    async def scroll(self, flt: Filter | None, after: str, limit: int, vectors: bool = False, thumbnails: bool = False
                     ) -> tuple[list[StoredRecord], dict[str, tuple[bytes, str]], bool]:
        """Up to `limit` records after the id `after` in id order (those matching `flt`, when given), their
        thumbnails when asked for, and whether more records follow."""
        collection = self.collection

        def read() -> tuple[list[StoredRecord], dict[str, tuple[bytes, str]], bool]:
            labels = None if flt is None else self._labels.matching(collection, flt)
            found = collection.store.scroll(after, limit + 1, labels, vectors)
            page = found[:limit]
            shown = collection.store.thumbnails([r.id for r in page]) if thumbnails and page else {}
            return page, shown, len(found) > limit

        return await self._run(read)

    async def update(self, ids: Sequence[str] | None, flt: Filter | None,
                     update: typed.Update) -> tuple[list[str], int]:
        """Changes fields and metadata of the images with these ids, or of those matching `flt` when the
        call starts (in chunks of WRITE_CHUNK); returns (ids updated, read-your-writes position: 0 with SQLite)."""
        if ids is None:
            ids = await self._run(lambda: self._matching_ids(flt))
        else:
            self.collection.check_owned(ids)
        return await self._chunked(ids, partial(self.collection.update_fields, update=update),
                                   None if self.replica is None else partial(self.replica.update, update=update))

    async def delete_where(self, flt: Filter | None, everything: bool) -> tuple[list[str], int]:
        """Deletes the images matching `flt` (every image when None) when the call starts, in chunks of
        WRITE_CHUNK; returns (ids deleted, read-your-writes position). Without `everything`, a filter
        matching every image of a non-empty collection is refused (FailedPrecondition)."""
        def select() -> list[str]:
            if flt is not None and not everything:
                live = self.collection.store.count()
                if live and len(self._labels.matching(self.collection, flt)) >= live:
                    raise FailedPrecondition(f"the filter matches every image ({live}); set `all` "
                                             "(clipsearch delete --all) to delete them all")
            return self._matching_ids(flt)

        ids = await self._run(select)
        return await self._chunked(ids, self.collection.delete, None if self.replica is None else self.replica.delete)

    async def _chunked(self, ids: Sequence[str], local: Callable[[Sequence[str]], list[str]],
                       shared: Callable[[Sequence[str]], tuple[list[str], int]] | None) -> tuple[list[str], int]:
        """Writes `ids` in chunks of WRITE_CHUNK, one store transaction each, with `local` (SQLite) or `shared`
        (the PostgreSQL store, then waiting until this server has applied it); more than one chunk runs on the
        bulk-write thread. Returns (the ids written, read-your-writes position: 0 with SQLite)."""
        done: list[str] = []
        position = 0
        bulk = len(ids) > WRITE_CHUNK
        for start in range(0, len(ids), WRITE_CHUNK):
            chunk = ids[start:start + WRITE_CHUNK]
            if shared is None:
                done += await self._write(partial(local, chunk), bulk)
            else:
                written, position = await self._write(partial(shared, chunk), bulk)
                done += written
        if self.replica is not None and position:
            await self._applied(self.replica, position)
        return done, position

    def _matching_ids(self, flt: Filter | None) -> list[str]:
        labels = self._labels.matching(self.collection, flt) if flt is not None else self.collection.store.live_labels()
        return self.collection.store.ids_of(labels.tolist())

    async def upsert(self, records: Sequence[ImageRecord]) -> tuple[int, int]:
        """Writes; returns (records written, read-your-writes position: 0 with SQLite)."""
        replica = self.replica
        if replica is None:
            return await self._write(lambda: self.collection.upsert(records)), 0
        written, position = await self._write(lambda: replica.upsert(records))
        await self._applied(replica, position)
        return written, position

    async def delete(self, ids: Sequence[str]) -> tuple[list[str], int]:
        """Deletes; returns (ids that existed, read-your-writes position: 0 with SQLite)."""
        replica = self.replica
        if replica is None:
            return await self._write(lambda: self.collection.delete(ids)), 0
        existed, position = await self._write(lambda: replica.delete(ids))
        await self._applied(replica, position)
        return existed, position

    async def _applied(self, replica: StoreFollower, position: int) -> bool:
        """Waits (at most read_wait_s) until this server has applied the store below `position`."""
        if replica.applied >= position:
            return True
        return await asyncio.to_thread(replica.wait_for, position, self.read_wait_s)

    async def wait_position(self, position: int) -> None:
        """Read-your-writes: returns once this server has applied the store below `position`, else
        raises Unavailable after read_wait_s. Always at once with SQLite (writes apply on return)."""
        replica = self.replica
        if replica is None or position <= 0 or await self._applied(replica, position):
            return
        raise Unavailable(
            f"this replica has applied the store up to position {replica.applied}, not yet {position} "
            f"(waited {self.read_wait_s:g}s); retry, or ask another replica")

    def replication(self) -> ReplicationStats:
        replica = self.replica
        if replica is None:
            return ReplicationStats("sqlite", 0, 0, 0.0)
        return ReplicationStats("postgresql", replica.applied, replica.head, replica.lag_s())

    async def stats(self) -> CollectionStats:
        return await self._run(lambda: self.collection.stats(report=True))

    async def aclose(self) -> None:
        await self.texts.close()
        await self.images.close()
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._fetches.shutdown(wait=False, cancel_futures=True)
        self._decodes.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        self._bulk.shutdown(wait=True)
        if self.replica is not None:
            self.replica.close()
        self.collection.close()


BULK_NICE = 10  # how much lower the CPU priority of the bulk-write thread is (Linux nice increment)


def _lower_priority() -> None:
    """Lowers the calling thread's CPU priority by BULK_NICE (Linux: a thread is a task with its own nice
    value; elsewhere nothing happens)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + BULK_NICE)
    except (AttributeError, OSError):
        pass


class EngineSlot:
    """Holds the engine once start-up has loaded it; until then every use is UNAVAILABLE."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def get(self) -> Engine:
        if self.engine is None:
            raise Unavailable("the server is still loading its model and index; retry in a few seconds")
        return self.engine
