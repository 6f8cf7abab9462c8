"""Micro-batching of text queries and a cache of their vectors.

Concurrent TextSearch calls put their text on a queue; one task takes whatever is queued (up to
`max_batch`, waiting at most `max_wait_s` for more after the first), encodes it in one forward pass
off the event loop, and hands each caller its vector. With the default max_wait_s=0 a lone query is
encoded at once, and queries that arrive while a forward pass runs form the next batch.
Repeated texts are answered from a bounded LRU cache.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Awaitable, Callable, Sequence

import numpy as np

__all__ = ["TextBatcher", "VectorCache"]


class VectorCache:
    """A bounded LRU map text -> vector (touched only from the event loop thread)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        vector = self._items.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        if self.size <= 0:
            return
        self._items[key] = vector
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class TextBatcher:
    """Encodes texts in micro-batches. `encode` runs a list of texts in a worker thread."""

    def __init__(
        self,
        encode: Callable[[Sequence[str]], Awaitable[np.ndarray]],
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        cache_size: int = 4096,
    ) -> None:
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cache = VectorCache(cache_size)
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    async def vector(self, text: str) -> np.ndarray:
        """The unit vector of `text`, from the cache or from the next batch."""
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._loop())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
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
            live = [(text, fut) for text, fut in batch if not fut.done()]  # skip cancelled callers
            if not live:
                continue
            texts = list(dict.fromkeys(text for text, _ in live))
            try:
                vectors = await self._encode(texts)
            except Exception as exc:  # noqa: BLE001 - hand the error to every caller of this batch
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            by_text = dict(zip(texts, vectors))
            for text, vector in by_text.items():
                self.cache.put(text, vector)
            for text, fut in live:
                if not fut.done():
                    fut.set_result(by_text[text])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
