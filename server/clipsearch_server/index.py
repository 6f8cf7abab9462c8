"""The FAISS HNSW vector index: the only module of clipsearch that imports faiss.

Vectors are L2-normalized and compared by inner product, so scores are cosine similarities.
Labels are the caller's int64 labels (IndexIDMap2 over IndexHNSWFlat). HNSW cannot remove
vectors, so `remove` records tombstones that every search filters out with an IDSelector (the
graph still routes through them); the owner rebuilds the index once they pile up.
FAISS forbids `add` concurrently with `add` or `search`, so a readers-writer lock lets searches
run in parallel and gives each add exclusive access. `save` is atomic: temp file, fsync, rename.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

from clipsearch_core.settings import default

from .files import replace_durably

__all__ = ["HnswIndex", "HnswParams", "normalize"]


@dataclass(frozen=True)
class HnswParams:
    """HNSW parameters. m: graph degree; ef_construction: build beam width; ef_search: query beam
    width (raised to k when k is larger). Defaults chosen for recall@10 >= 0.95 on CLIP vectors."""

    m: int = default("--hnsw-m")
    ef_construction: int = default("--ef-construction")
    ef_search: int = default("--ef-search")


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Returns float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


class _RWLock:
    """Many readers or one writer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class HnswIndex:
    """An inner-product HNSW index over unit vectors, addressed by int64 labels."""

    def __init__(self, dim: int, params: HnswParams = HnswParams(), _loaded: object = None) -> None:
        self.dim = dim
        self.params = params
        if _loaded is None:
            hnsw = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = params.ef_construction
            self._index = faiss.IndexIDMap2(hnsw)
        else:
            self._index = _loaded
        self._lock = _RWLock()
        self._tombstones: set[int] = set()
        self._selector: tuple[object, object] | None = None  # (IDSelectorBatch, IDSelectorNot), kept alive

    @classmethod
    def load(cls, path: Path, params: HnswParams) -> "HnswIndex":
        """Reads an index written by `save`. Raises ValueError if it was built with another M."""
        loaded = faiss.read_index(str(path))
        hnsw = faiss.downcast_index(loaded.index)
        if not isinstance(loaded, faiss.IndexIDMap2) or not isinstance(hnsw, faiss.IndexHNSWFlat):
            raise ValueError(f"{path} is not an IDMap2,HNSW-Flat index")
        built_m = int(hnsw.hnsw.nb_neighbors(1))
        if built_m != params.m:
            raise ValueError(f"{path} was built with M={built_m}, configuration says M={params.m}")
        hnsw.hnsw.efConstruction = params.ef_construction
        return cls(int(loaded.d), params, _loaded=loaded)

    def save(self, path: Path) -> None:
        """Writes the index (without tombstones: the owner records those) atomically to `path`."""
        tmp = path.with_name(path.name + ".tmp")
        with self._lock.read():
            faiss.write_index(self._index, str(tmp))
        replace_durably(tmp, path)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    def labels(self) -> np.ndarray:
        """Every label in the index, tombstoned or not."""
        with self._lock.read():
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def remove(self, labels: Iterable[int]) -> None:
        """Tombstones labels: searches never return them again."""
        with self._lock.write():
            self._tombstones.update(int(x) for x in labels)
            self._selector = None

    @property
    def description(self) -> str:
        return f"HNSW{self.params.m},Flat (inner product)"

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Adds unit vectors (n, dim) under int64 labels (n,). Labels must be new."""
        vectors = normalize(vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index has {self.dim}")
        with self._lock.write():
            self._index.add_with_ids(vectors, np.ascontiguousarray(labels, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scores, labels), each (n, k), best first; missing results have label -1."""
        queries = normalize(queries)
        with self._lock.read():
            params = faiss.SearchParametersHNSW(efSearch=max(self.params.ef_search, k))
            if self._tombstones:
                params.sel = self._exclusion()[1]
            scores, labels = self._index.search(queries, k, params=params)
        return scores, labels

    def _exclusion(self) -> tuple[object, object]:
        selector = self._selector
        if selector is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones)))
            selector = self._selector = (batch, faiss.IDSelectorNot(batch))
        return selector


def set_threads(n: int) -> None:
    """Sets the number of OpenMP threads FAISS uses for one call."""
    faiss.omp_set_num_threads(n)
