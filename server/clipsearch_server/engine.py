"""The search engine: query encoding with the CLIP model plus collection lookups, off the event loop.

The gRPC layer calls these coroutines with validated arguments. Model and FAISS work is blocking,
so it runs in a thread pool; the asyncio loop only routes requests.
"""

from __future__ import annotations

import asyncio
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
from .store import ImageRecord

__all__ = ["Engine", "EngineSlot"]

T = TypeVar("T")


class Engine:
    """Encodes queries and searches the collection."""

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

    async def upsert(self, records: Sequence[ImageRecord]) -> int:
        return await self._write(lambda: self.collection.upsert(records))

    async def delete(self, ids: Sequence[str]) -> list[str]:
        return await self._write(lambda: self.collection.delete(ids))

    async def stats(self) -> CollectionStats:
        return await self._run(self.collection.stats)

    async def aclose(self) -> None:
        await self.texts.close()
        await self.images.close()
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        self.collection.close()


class EngineSlot:
    """Holds the engine once start-up has loaded it; until then every use is UNAVAILABLE."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def get(self) -> Engine:
        if self.engine is None:
            raise Unavailable("the server is still loading its model and index; retry in a few seconds")
        return self.engine
