"""The vector index seam: the abstract `VectorIndex`, its kinds, and the only faiss import of clipsearch.

Vectors are L2-normalized and compared by inner product, so scores are cosine similarities.
Labels are the caller's int64 labels. A kind is built from an index spec string by `make_index`
("HNSW32,Flat" today; IVF-PQ and HNSW-SQ8 plug into `_KINDS` later without touching the collection).

HNSW cannot remove vectors, so `remove` records tombstones that every search filters out with an
IDSelector (the graph still routes through them); the owner rebuilds the index once they pile up.
The selector is built under the write lock whenever the tombstones change and handed to each search
as an immutable `_Exclusion` the search holds for the whole faiss call (faiss keeps no reference to
`params.sel`), so a selector can never be freed while a search uses it.
FAISS forbids `add` concurrently with `add` or `search`: a writer-preferring readers-writer lock lets
searches run in parallel, gives each write exclusive access, and stops new searches from starving a
waiting write. `save` is atomic: temp file, fsync, rename; it holds the read lock (searches go on).
New vectors reach the graph through the segmented index (segments.py), not one upsert at a time.
"""

from __future__ import annotations

import abc
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import faiss
import numpy as np

from clipsearch_core.settings import default

from .files import replace_durably

__all__ = ["HnswIndex", "HnswParams", "SearchParams", "VectorIndex", "load_index", "make_index", "normalize"]


@dataclass(frozen=True)
class HnswParams:
    """HNSW parameters. m: graph degree; ef_construction: build beam width; ef_search: query beam
    width (raised to k when k is larger). Defaults chosen for recall@10 >= 0.95 on CLIP vectors."""

    m: int = default("--hnsw-m")
    ef_construction: int = default("--ef-construction")
    ef_search: int = default("--ef-search")


@dataclass(frozen=True)
class SearchParams:
    """Per-search options. ef_search: beam width for this call (None: the index's own, raised to k).
    include: int64 labels the results are restricted to (None: all); tombstones stay excluded.
    The graph walk still visits other nodes, so a small `include` needs a larger ef_search (or an exact
    scan over `vectors(include)`): faiss stops after ef_search candidates, short of k if few pass."""

    ef_search: int | None = None
    include: np.ndarray | None = None


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Returns float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


class _RWLock:
    """Many readers or one writer; a waiting writer goes first (new readers wait behind it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(frozen=True)
class _Exclusion:
    """Tombstoned labels and the faiss selector over them; immutable, replaced as a whole.
    `ids` and `batch` are kept referenced because IDSelectorNot does not own them."""

    ids: np.ndarray
    batch: object
    selector: object

    @classmethod
    def of(cls, labels: Iterable[int]) -> "_Exclusion | None":
        ids = np.fromiter(labels, dtype=np.int64)
        if not len(ids):
            return None
        batch = faiss.IDSelectorBatch(ids)
        return cls(ids, batch, faiss.IDSelectorNot(batch))


@dataclass(frozen=True)
class _Inclusion:
    """A bitmap selector over the labels a search is restricted to (1 bit per label up to the largest:
    labels are dense). `bitmap` is kept referenced because the selector does not own it."""

    bitmap: np.ndarray
    selector: object

    @classmethod
    def of(cls, labels: np.ndarray | None) -> "_Inclusion | None":
        if labels is None:
            return None
        labels = np.asarray(labels, dtype=np.int64)
        size = int(labels.max()) + 1 if len(labels) else 1
        bits = np.zeros(size, dtype=bool)
        bits[labels] = True
        bitmap = np.packbits(bits, bitorder="little")
        return cls(bitmap, faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)))  # n: bytes, not bits


class VectorIndex(abc.ABC):
    """An inner-product index over unit vectors addressed by int64 labels, with tombstones.
    Thread-safe: searches run in parallel; add/remove/train are exclusive."""

    dim: int

    @property
    @abc.abstractmethod
    def description(self) -> str: ...

    @property
    @abc.abstractmethod
    def ntotal(self) -> int:
        """Entries in the index, tombstoned ones included."""

    @property
    @abc.abstractmethod
    def tombstones(self) -> int: ...

    @property
    def is_trained(self) -> bool:
        """False for kinds that need `train` before `add` (IVF); HNSW-Flat is always trained."""
        return True

    def train(self, vectors: np.ndarray) -> None:
        """Trains the kind on sample vectors (a no-op for kinds that need no training)."""

    @abc.abstractmethod
    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Adds vectors (n, dim) under new int64 labels (n,)."""

    @abc.abstractmethod
    def remove(self, labels: Iterable[int]) -> None:
        """Tombstones labels: searches never return them again."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, params: SearchParams = SearchParams()) -> tuple[np.ndarray, np.ndarray]:
        """Returns (scores, labels), each (n, k), best first, tombstones excluded; missing results are -1."""

    @abc.abstractmethod
    def labels(self) -> np.ndarray:
        """Every label in the index, tombstoned or not."""

    @abc.abstractmethod
    def vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, vectors) of those of `labels` the index holds (tombstoned or not), for exact scans."""

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Writes the index (without tombstones: the owner records those) atomically to `path`."""

    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """Approximate memory the index uses, in bytes."""


class HnswIndex(VectorIndex):
    """HNSW-Flat: an inner-product HNSW graph over unit vectors (IndexIDMap2 over IndexHNSWFlat)."""

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
        self._exclusion: _Exclusion | None = None  # rebuilt under the write lock when tombstones change

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

    @property
    def description(self) -> str:
        return f"HNSW{self.params.m},Flat (inner product)"

    def memory_bytes(self) -> int:
        # vectors + graph links (about 2*M neighbours at level 0, int32) + id map (int64)
        return self.ntotal * (4 * self.dim + 4 * 2 * self.params.m + 8) + 8 * len(self._tombstones)

    def labels(self) -> np.ndarray:
        with self._lock.read():
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        with self._lock.read():
            try:
                return labels, self._index.reconstruct_batch(labels)
            except RuntimeError:  # some label is not here (e.g. removed by a compaction): keep those that are
                labels = labels[np.isin(labels, faiss.vector_to_array(self._index.id_map))]
                return labels, self._index.reconstruct_batch(labels)

    def remove(self, labels: Iterable[int]) -> None:
        new = {int(x) for x in labels} - self._tombstones
        if not new:
            return
        with self._lock.write():
            self._tombstones.update(new)
            self._exclusion = _Exclusion.of(self._tombstones)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        vectors = normalize(vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index has {self.dim}")
        with self._lock.write():
            self._index.add_with_ids(vectors, np.ascontiguousarray(labels, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, params: SearchParams = SearchParams()) -> tuple[np.ndarray, np.ndarray]:
        queries = normalize(queries)
        with self._lock.read():
            exclusion = self._exclusion  # held by this frame until faiss returns
            search_params = faiss.SearchParametersHNSW(efSearch=max(params.ef_search or self.params.ef_search, k))
            include = _Inclusion.of(params.include)  # held by this frame until faiss returns
            both = None
            if include is not None and exclusion is not None:
                both = faiss.IDSelectorAnd(include.selector, exclusion.selector)
                search_params.sel = both
            elif include is not None or exclusion is not None:
                search_params.sel = (include or exclusion).selector
            scores, labels = self._index.search(queries, k, params=search_params)
            del search_params, exclusion, include, both
        return scores, labels


_SPEC = re.compile(r"^HNSW(\d+),Flat$")
_KINDS: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str], int, HnswParams], VectorIndex],
                        Callable[[Path, HnswParams], VectorIndex]]] = {
    "HNSW-Flat": (_SPEC, lambda m, dim, p: HnswIndex(dim, HnswParams(int(m.group(1)), p.ef_construction, p.ef_search)),
                  HnswIndex.load),
}


def _kind(spec: str) -> tuple[re.Match[str], Callable, Callable]:
    for pattern, build, load in _KINDS.values():
        match = pattern.match(spec)
        if match:
            return match, build, load
    raise ValueError(f"unknown index spec {spec!r}; known kinds: {', '.join(_KINDS)} (e.g. 'HNSW32,Flat')")


def make_index(spec: str, dim: int, params: HnswParams = HnswParams()) -> VectorIndex:
    """A new empty index of the kind `spec` names, e.g. make_index("HNSW32,Flat", 512, params)."""
    match, build, _ = _kind(spec)
    return build(match, dim, params)


def load_index(spec: str, path: Path, params: HnswParams = HnswParams()) -> VectorIndex:
    """Reads an index of the kind `spec` names, written by its `save`."""
    _, _, load = _kind(spec)
    return load(path, params)


def set_threads(n: int) -> None:
    """Sets the number of OpenMP threads FAISS uses for one call."""
    faiss.omp_set_num_threads(n)
