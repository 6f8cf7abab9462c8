"""Micro-batching of queries through the model, and a cache of text vectors.

Concurrent TextSearch (or ImageSearch) calls put their text (or preprocessed image) on a queue; one
task takes whatever is queued (up to `max_batch`, waiting at most `max_wait_s` for more after the
first), encodes it in one forward pass off the event loop, and hands each caller its vector. With
the default max_wait_s=0 a lone query is encoded at once, and queries that arrive while a forward
pass runs form the next batch. Texts are deduplicated within a batch and repeated texts are
answered from a bounded LRU cache; images are neither (their bytes differ).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

import numpy as np

__all__ = ["MicroBatcher", "TextBatcher", "VectorCache"]

T = TypeVar("T")


class VectorCache:
    """A bounded LRU map key -> vector (touched only from the event loop thread)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        vector = self._items.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, key: Hashable, vector: np.ndarray) -> None:
        if self.size <= 0:
            return
        self._items[key] = vector
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class MicroBatcher(Generic[T]):
    """Encodes items in micro-batches. `encode` runs a list of items in a worker thread and returns
    one vector per item. `key` (texts: the text itself) enables deduplication and the cache; without
    it every item is encoded."""

    def __init__(
        self,
        encode: Callable[[Sequence[T]], Awaitable[np.ndarray]],
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        cache_size: int = 0,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        self._encode = encode
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self.cache = VectorCache(cache_size if key is not None else 0)
        self._key = key
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    async def vector(self, item: T) -> np.ndarray:
        """The unit vector of `item`, from the cache or from the next batch."""
        if self._key is not None:
            cached = self.cache.get(self._key(item))
            if cached is not None:
                return cached
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._loop())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]  # skip cancelled callers
            if live:
                await self._run_batch(live)

    async def _run_batch(self, live: list[tuple[T, asyncio.Future[np.ndarray]]]) -> None:
        keys: list[Any] = [self._key(item) for item, _ in live] if self._key else list(range(len(live)))
        unique = dict(zip(keys, (item for item, _ in live)))  # first item of each key, in order
        try:
            vectors = await self._encode(list(unique.values()))
        except Exception as exc:  # noqa: BLE001 - hand the error to every caller of this batch
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        by_key = dict(zip(unique, vectors))
        if self._key is not None:
            for key, vector in by_key.items():
                self.cache.put(key, vector)
        for key, (_, fut) in zip(keys, live):
            if not fut.done():
                fut.set_result(by_key[key])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class TextBatcher(MicroBatcher[str]):
    """Micro-batches texts, deduplicated by text, with an LRU cache of their vectors."""

    def __init__(self, encode: Callable[[Sequence[str]], Awaitable[np.ndarray]], max_batch: int = 32,
                 max_wait_s: float = 0.0, cache_size: int = 4096) -> None:
        super().__init__(encode, max_batch, max_wait_s, cache_size, key=lambda text: text)
