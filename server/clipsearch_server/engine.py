"""The search engine: query encoding with the CLIP model plus collection lookups, off the event loop.

The gRPC layer calls these coroutines with validated arguments. Model and FAISS work is blocking,
so it runs in a thread pool; the asyncio loop only routes requests. With a shared PostgreSQL store
(`replica` set, replication.py) writes go to the store and searches may first wait for a position.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from clipsearch_core.model import ClipEncoder
from clipsearch_core.settings import default
from clipsearch_core.images import LoadLimits, decode_image, read_uri

from clipsearch.v1.types_pb2 import Filter

from . import filters
from .batching import MicroBatcher, TextBatcher
from .collection import Collection, CollectionStats, Hit
from .errors import Unavailable
from .replication import Replica
from .store import ImageRecord

__all__ = ["Engine", "EngineSlot", "ReplicationStats"]

T = TypeVar("T")


@dataclass(frozen=True)
class ReplicationStats:
    """Where this server stands against its store (positions are 0 with SQLite)."""

    store_kind: str
    applied_position: int
    store_position: int
    lag_s: float


class Engine:
    """Encodes queries and searches the collection."""

    replica: Replica | None = None  # set when the store is a shared PostgreSQL database
    read_wait_s: float = 5.0  # how long a search waits for a min_position

    def __init__(self, encoder: ClipEncoder, collection: Collection, limits: LoadLimits, workers: int = 4,
                 text_batch: int = default("--text-batch"), image_batch: int = default("--image-batch"),
                 cache_size: int = 4096) -> None:
        self.encoder = encoder
        self.collection = collection
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
        # Writes are serialized by the collection anyway; their own thread keeps them from queueing
        # behind searches in the shared pool.
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-write")
        self.texts = TextBatcher(lambda texts: self._run(lambda: encoder.encode_text(texts)), text_batch,
                                 cache_size=cache_size)
        self.images: MicroBatcher[Any] = MicroBatcher(
            lambda tensors: self._run(lambda: encoder.encode_images(tensors)), image_batch)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _write(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writes, fn)

    def _search(self, vector: np.ndarray, k: int, flt: Filter | None, exclude_id: str | None = None) -> list[Hit]:
        """Unfiltered, or among the filter's matches (evaluated as a whole from the field index)."""
        if flt is None:
            return self.collection.search(vector, k, exclude_id=exclude_id)
        matching = filters.matching_labels(self.collection.store, flt)
        return self.collection.search_among(vector, k, matching, exclude_id=exclude_id)

    async def text_search(self, text: str, k: int, flt: Filter | None = None) -> list[Hit]:
        vector = await self.texts.vector(text)
        return await self._run(lambda: self._search(vector, k, flt))

    async def image_search_bytes(self, data: bytes, k: int, flt: Filter | None = None) -> list[Hit]:
        return await self._image_search(lambda: data, k, flt)

    async def image_search_uri(self, uri: str, k: int, flt: Filter | None = None) -> list[Hit]:
        return await self._image_search(lambda: read_uri(uri, self.limits), k, flt)

    async def _image_search(self, read: Callable[[], bytes], k: int, flt: Filter | None) -> list[Hit]:
        """Reads and decodes in the pool (concurrently with other queries), encodes in a micro-batch."""
        tensor = await self._run(lambda: self.encoder.preprocess(decode_image(read(), self.limits)))
        vector = await self.images.vector(tensor)
        return await self._run(lambda: self._search(vector, k, flt))

    async def image_search_id(self, image_id: str, k: int, flt: Filter | None = None) -> list[Hit]:
        def work() -> list[Hit]:
            return self._search(self.collection.vector_of(image_id), k, flt, exclude_id=image_id)

        return await self._run(work)

    async def thumbnails(self, ids: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """id -> (thumbnail, MIME type) for those of `ids` that have one."""
        return await self._run(lambda: self.collection.store.thumbnails(ids))

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

    async def _applied(self, replica: Replica, position: int) -> bool:
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
        return await self._run(self.collection.stats)

    async def aclose(self) -> None:
        await self.texts.close()
        await self.images.close()
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        if self.replica is not None:
            self.replica.close()
        self.collection.close()


class EngineSlot:
    """Holds the engine once start-up has loaded it; until then every use is UNAVAILABLE."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def get(self) -> Engine:
        if self.engine is None:
            raise Unavailable("the server is still loading its model and index; retry in a few seconds")
        return self.engine
