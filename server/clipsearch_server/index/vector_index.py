"""The vector index seam: the abstract `VectorIndex`, its kinds, and the only faiss import of clipsearch.

Vectors are L2-normalized and compared by inner product, so scores are cosine similarities.
Labels are the caller's int64 labels. A kind is built from a faiss index_factory spec string by
`make_index`: "HNSW32,Flat" is `HnswIndex` (exact vectors in the graph); every other spec ("Flat",
"HNSW32,SQ8", "IVF1024_HNSW32,PQ64x4fs", any factory string) is a `FaissIndex`, which keeps the exact
vectors in a `VectorFile` on disk (mmap) to re-rank its candidates and serve exact scans. Which spec a
collection uses, and when it is trained, is decided in kinds.py and collection/collection.py.

IVF kinds delete for real (`remove_ids`) and search with `SearchParametersIVF` (nprobe, selector).

HNSW and flat kinds cannot remove vectors, so `remove` records tombstones that every search filters out with an
IDSelector (the graph still routes through them); the owner rebuilds the index once they pile up.
The selector is built whenever the tombstones change (under a mutex of its own, not the write lock:
tombstoning never touches faiss, so it does not wait for a snapshot's save) and handed to each search
as an immutable `_Exclusion` that the search reads once and holds for the whole faiss call (faiss keeps
no reference to `params.sel`), so a selector can never be freed while a search uses it.
FAISS forbids `add` concurrently with `add` or `search`: a writer-preferring readers-writer lock lets
searches run in parallel, gives each write exclusive access, and stops new searches from starving a
waiting write. `save` is atomic: temp file, fsync, rename; it holds the read lock (searches go on).
New vectors reach the graph through the segmented index (segments.py), not one upsert at a time.
"""

from __future__ import annotations

import abc
import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import faiss
import numpy as np

from clipsearch_core.settings import default

from .files import replace_durably
from .vectorfile import VectorFile

__all__ = ["FaissIndex", "HnswIndex", "HnswParams", "IndexOptions", "SearchParams", "VectorIndex", "load_index",
           "make_index", "needs_training", "normalize"]


@dataclass(frozen=True)
class HnswParams:
    """HNSW parameters. m: graph degree; ef_construction: build beam width; ef_search: query beam
    width (raised to k when k is larger). Defaults chosen for recall@10 >= 0.95 on CLIP vectors."""

    m: int = default("--hnsw-m")
    ef_construction: int = default("--ef-construction")
    ef_search: int = default("--ef-search")


@dataclass(frozen=True)
class IndexOptions:
    """Search options of the compressed kinds. nprobe: IVF lists scanned per query (scaled like ef_search
    when a search asks for more effort); rerank: candidates fetched per result and re-scored with the
    exact vectors (0: no re-ranking)."""

    nprobe: int = default("--nprobe")
    rerank: int = default("--rerank")


@dataclass(frozen=True)
class SearchParams:
    """Per-search options. ef_search: beam width for this call (None: the index's own, raised to k).
    include: int64 labels the results are restricted to (None: all); tombstones stay excluded.
    The graph walk still visits other nodes, so a small `include` needs a larger ef_search (or an exact
    scan over `vectors(include)`): faiss stops after ef_search candidates, short of k if few pass."""

    ef_search: int | None = None  # for IVF kinds, nprobe scales by ef_search / the index's own ef_search
    include: np.ndarray | None = None


UNIT_TOLERANCE = 1e-6  # a row whose norm is this close to 1 is unit already: kept bit for bit


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Returns float32 rows scaled to unit L2 norm (zero rows stay zero), as a new array. Rows that are
    unit already (within UNIT_TOLERANCE, float32 rounding) are kept as they are, so normalizing is
    idempotent: a stored vector written again (an import of an export) is stored bit for bit."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.where(np.abs(norms - 1.0) <= UNIT_TOLERANCE, array, array / np.maximum(norms, 1e-12))


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
    Thread-safe: searches run in parallel; add/remove/train are exclusive.
    spec: the faiss factory string it was built from; trained_on: the collection size it was trained
    for (0: it needs no training)."""

    dim: int
    spec: str
    params: HnswParams
    trained_on: int = 0

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
        """False for kinds that need `train` before `add` (IVF, SQ, PQ); HNSW-Flat is always trained."""
        return True

    def train(self, vectors: np.ndarray) -> None:  # noqa: B027 - optional hook: a no-op unless the kind needs training
        """Trains the kind on sample vectors (a no-op for kinds that need no training)."""

    @abc.abstractmethod
    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Adds vectors (n, dim) under new int64 labels (n,)."""

    @abc.abstractmethod
    def remove(self, labels: Iterable[int]) -> None:
        """Removes labels (or tombstones them): searches never return them again."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int,
               params: SearchParams = SearchParams()) -> tuple[np.ndarray, np.ndarray]:
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
        """Memory the index uses, in bytes (from the sizes of its structures)."""

    def disk_bytes(self) -> int:
        """Bytes the index reads from disk through mmap (its exact vectors), 0 when all is in RAM."""
        return 0


class _Tombstoned(VectorIndex):
    """The lock, tombstones and selectors shared by the faiss kinds."""

    _index: Any  # the faiss index, set by the subclass

    def __init__(self) -> None:
        self._lock = _RWLock()
        self._tombstones: set[int] = set()
        self._tombstoning = threading.Lock()  # orders removes (see `remove`)
        self._exclusion: _Exclusion | None = None  # replaced as a whole (under _tombstoning) when they change

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with self._lock.read():
            faiss.write_index(self._index, str(tmp))
        replace_durably(tmp, path)

    def remove(self, labels: Iterable[int]) -> None:
        # Tombstones never touch the faiss index: a plain mutex, not the index's write lock, which would
        # wait for a snapshot's save (read lock) and, writer-preferring, stall every search behind it.
        # Searches take `_exclusion` once (immutable), so swapping it needs no exclusive access.
        with self._tombstoning:
            new = {int(x) for x in labels} - self._tombstones
            if not new:
                return
            tombstones = self._tombstones | new
            self._exclusion = _Exclusion.of(tombstones)
            self._tombstones = tombstones

    @contextmanager
    def _selector(self, include: np.ndarray | None) -> Iterator[object]:
        """The faiss selector for one search (None: all), with every object it points to held until the
        search returns. Call under the read lock."""
        exclusion = self._exclusion
        inclusion = _Inclusion.of(include)
        if inclusion is not None and exclusion is not None:
            both = faiss.IDSelectorAnd(inclusion.selector, exclusion.selector)
            yield both
            del both
        else:
            yield None if inclusion is None and exclusion is None else (inclusion or exclusion).selector
        del exclusion, inclusion


class HnswIndex(_Tombstoned):
    """HNSW-Flat: an inner-product HNSW graph over unit vectors (IndexIDMap2 over IndexHNSWFlat)."""

    def __init__(self, dim: int, params: HnswParams = HnswParams(), _loaded: object = None) -> None:
        super().__init__()
        self.dim = dim
        self.params = params
        self.spec = f"HNSW{params.m},Flat"
        if _loaded is None:
            hnsw = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = params.ef_construction
            self._index = faiss.IndexIDMap2(hnsw)
        else:
            self._index = _loaded

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

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        vectors = normalize(vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index has {self.dim}")
        with self._lock.write():
            self._index.add_with_ids(vectors, np.ascontiguousarray(labels, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int,
               params: SearchParams = SearchParams()) -> tuple[np.ndarray, np.ndarray]:
        queries = normalize(queries)
        with self._lock.read(), self._selector(params.include) as selector:
            search_params = faiss.SearchParametersHNSW(efSearch=max(params.ef_search or self.params.ef_search, k))
            if selector is not None:
                search_params.sel = selector
            scores, labels = self._index.search(queries, k, params=search_params)
            del search_params
        return scores, labels


class FaissIndex(_Tombstoned):
    """Any other kind, from a faiss factory string, over unit vectors by inner product ("Flat" for exact
    serving, "HNSW32,SQ8", "IVF1024_HNSW32,PQ64x4fs", ...).

    IVF kinds hold the labels as their own ids and delete with `remove_ids` (no tombstones; fast-scan
    IVF kinds excepted, see `_deletes`); the others sit in an IndexIDMap2 and keep tombstones. Except for "Flat",
    which holds exact vectors itself, the exact vectors are written to `vectors` (a VectorFile on disk): with
    `options.rerank` > 0 a search fetches k * rerank candidates from the codes and re-scores them with the exact
    vectors."""

    def __init__(self, dim: int, spec: str, params: HnswParams = HnswParams(), options: IndexOptions = IndexOptions(),
                 vectors: VectorFile | None = None, trained_on: int = 0, _loaded: object = None) -> None:
        super().__init__()
        self.dim, self.spec, self.params, self.options, self.trained_on = dim, spec, params, options, trained_on
        built = _factory(spec, dim) if _loaded is None else _loaded
        self._file = None if spec == "Flat" else vectors
        if spec != "Flat" and vectors is None:
            raise ValueError(f"index kind {spec!r} needs a vector file for its exact vectors")
        self._ivf = faiss.try_extract_index_ivf(built)
        self._native = self._ivf is not None and not isinstance(built, faiss.IndexRefine)
        # faiss 1.15's remove_ids on fast-scan (4-bit, packed) lists corrupts codes added afterwards
        # (measured: 3.5% of vectors no longer found themselves), so those kinds keep tombstones
        self._deletes = self._native and not isinstance(faiss.downcast_index(self._ivf), faiss.IndexIVFFastScan)
        if _loaded is None and not self._native:
            built = faiss.IndexIDMap2(built)
        self._index = built
        inner = faiss.downcast_index(built.index) if isinstance(built, faiss.IndexIDMap2) else built
        self._graph = isinstance(inner, faiss.IndexHNSW)
        if self._graph and _loaded is None:
            inner.hnsw.efConstruction = params.ef_construction
        self._quantizer_graph = self._ivf is not None and isinstance(faiss.downcast_index(self._ivf.quantizer),
                                                                     faiss.IndexHNSW)
        self._present = np.zeros(0, dtype=bool)  # by label: held by the index (tombstoned or not)
        self._memory: tuple[int, int] = (-1, 0)  # (ntotal, bytes) of the last measure
        if _loaded is not None:
            self._mark(self._stored_ids(), True)

    @classmethod
    def load(cls, path: Path, params: HnswParams, spec: str = "", options: IndexOptions = IndexOptions(),
             vectors: VectorFile | None = None, trained_on: int = 0) -> "FaissIndex":
        """Reads an index written by `save` (its spec and training size come from the snapshot pointer)."""
        loaded = faiss.read_index(str(path))
        return cls(int(loaded.d), spec, params, options, vectors, trained_on, _loaded=loaded)

    def save(self, path: Path) -> None:
        if self._file is not None:
            self._file.flush()  # every label the file will cover has its exact row on disk
        super().save(path)

    @property
    def _reranks(self) -> bool:
        return self._file is not None and self.options.rerank > 0

    @property
    def description(self) -> str:
        rerank = f", {self.options.rerank}x candidates re-ranked with exact vectors" if self._reranks else ""
        return f"{self.spec} (inner product{rerank})"

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def nlist(self) -> int:
        return int(self._ivf.nlist) if self._ivf is not None else 0

    def train(self, vectors: np.ndarray) -> None:
        with self._lock.write():
            self._index.train(normalize(vectors))

    def _mark(self, labels: np.ndarray, present: bool) -> None:
        if len(labels) and int(labels.max()) >= len(self._present):
            grown = np.zeros(max(int(labels.max()) + 1, 2 * len(self._present)), dtype=bool)
            grown[:len(self._present)] = self._present
            self._present = grown
        self._present[labels[labels < len(self._present)]] = present

    def _stored_ids(self) -> np.ndarray:
        if not self._native:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        lists = self._ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(self._ivf.nlist) if lists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        vectors = normalize(vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index has {self.dim}")
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if self._file is not None:
            self._file.write(labels, vectors)  # before the codes: a search that finds a label reads its row
        with self._lock.write():
            self._index.add_with_ids(vectors, labels)
            self._mark(labels, True)

    def remove(self, labels: Iterable[int]) -> None:
        if not self._deletes:
            super().remove(labels)
            return
        ids = np.fromiter(labels, dtype=np.int64)
        with self._lock.write():
            ids = ids[ids < len(self._present)]
            ids = ids[self._present[ids]]
            if len(ids):
                self._index.remove_ids(faiss.IDSelectorBatch(ids))
                self._mark(ids, False)

    def labels(self) -> np.ndarray:
        return np.flatnonzero(self._present).astype(np.int64)

    def vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.asarray(labels, dtype=np.int64)
        present = self._present
        inside = labels[(labels >= 0) & (labels < len(present))]
        labels = np.ascontiguousarray(inside[present[inside]])
        if self._file is not None:
            return labels, self._file.read(labels)
        with self._lock.read():
            return labels, self._index.reconstruct_batch(labels)

    def search(self, queries: np.ndarray, k: int,
               params: SearchParams = SearchParams()) -> tuple[np.ndarray, np.ndarray]:
        queries = normalize(queries)
        fetch = k * self.options.rerank if self._reranks else k
        effort = (params.ef_search or self.params.ef_search) / self.params.ef_search
        with self._lock.read(), self._selector(params.include) as selector:
            quantizer_params = None
            if self._native:
                nprobe = min(self.nlist, max(1, math.ceil(self.options.nprobe * effort)))
                search_params = faiss.SearchParametersIVF(nprobe=nprobe)
                if self._quantizer_graph:
                    quantizer_params = faiss.SearchParametersHNSW(efSearch=max(2 * nprobe, 64))
                    search_params.quantizer_params = quantizer_params
            elif self._graph:
                search_params = faiss.SearchParametersHNSW(
                    efSearch=max(math.ceil(self.params.ef_search * effort), fetch))
            else:
                search_params = faiss.SearchParameters()
            if selector is not None:
                search_params.sel = selector
            try:
                scores, labels = self._index.search(queries, fetch, params=search_params)
            except RuntimeError as exc:  # a factory kind that takes no search parameters: filter afterwards
                if "invalid search params" not in str(exc):
                    raise
                scores, labels = self._post_filtered(queries, fetch, params.include)
            del search_params, quantizer_params
        if not self._reranks:
            return scores, labels
        return self._rerank(queries, labels, k)

    def _post_filtered(self, queries: np.ndarray, fetch: int,
                       include: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Search without a selector, over-fetching by the tombstones, then drop the excluded labels (may
        come back short: the collection completes short searches exactly). Call under the read lock."""
        exclusion = self._exclusion  # read once: a remove may replace it meanwhile
        dead = exclusion.ids if exclusion is not None else np.empty(0, dtype=np.int64)
        wide = min(self.ntotal, fetch + len(dead) + (self.ntotal - len(include) if include is not None else 0))
        scores, labels = self._index.search(queries, max(wide, fetch))
        keep = ~np.isin(labels, dead) & (labels >= 0)
        if include is not None:
            keep &= np.isin(labels, include)
        out_scores = np.full((len(queries), fetch), -np.inf, dtype=np.float32)
        out_labels = np.full((len(queries), fetch), -1, dtype=np.int64)
        for q in range(len(queries)):
            row_scores, row_labels = scores[q][keep[q]][:fetch], labels[q][keep[q]][:fetch]
            out_scores[q, :len(row_labels)], out_labels[q, :len(row_labels)] = row_scores, row_labels
        return out_scores, out_labels

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of each query's candidates by exact score (ties: smaller label first)."""
        assert self._file is not None
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_labels = np.full((len(queries), k), -1, dtype=np.int64)
        for q in range(len(queries)):
            found = np.sort(candidates[q][candidates[q] >= 0])  # sorted: rows are read in file order
            scores = self._file.read(found) @ queries[q]
            order = np.lexsort((found, -scores))[:k]
            out_scores[q, :len(order)] = scores[order]
            out_labels[q, :len(order)] = found[order]
        return out_scores, out_labels

    def memory_bytes(self) -> int:
        with self._lock.read():
            ntotal = self.ntotal
            if self._memory[0] != ntotal:  # walking the inverted lists costs nlist calls: once per size
                self._memory = (ntotal, _structure_bytes(self._index))
            return self._memory[1] + len(self._present) + 8 * len(self._tombstones)

    def disk_bytes(self) -> int:
        return self._file.disk_bytes if self._file is not None else 0


def _structure_bytes(index: object) -> int:
    """Bytes held by a faiss index's main structures: codes, ids, graph links, inverted lists."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        return _structure_bytes(index.index) + 8 * int(index.id_map.size()) + 16 * int(index.ntotal)
    if isinstance(index, faiss.IndexPreTransform):
        return _structure_bytes(index.index)
    if isinstance(index, faiss.IndexRefine):
        return _structure_bytes(index.base_index) + _structure_bytes(index.refine_index)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        links = 4 * int(hnsw.neighbors.size()) + 4 * int(hnsw.levels.size()) + 8 * int(hnsw.offsets.size())
        return links + _structure_bytes(index.storage)
    if isinstance(index, faiss.IndexIVF):
        lists = faiss.downcast_InvertedLists(index.invlists)
        sizes = np.array([lists.list_size(i) for i in range(index.nlist)], dtype=np.int64)
        if isinstance(lists, faiss.BlockInvertedLists):
            codes = int((-(-sizes // lists.n_per_block)).sum()) * int(lists.block_size)
        else:
            codes = int(sizes.sum()) * int(index.code_size)
        return codes + 8 * int(sizes.sum()) + _structure_bytes(index.quantizer)
    return int(index.ntotal) * int(index.sa_code_size())


def _factory(spec: str, dim: int) -> object:
    try:
        return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].split(": ", 1)[-1] if str(exc).strip() else "rejected by faiss"
        raise ValueError(f"unknown index spec {spec!r} for dimension {dim}: {reason}; use hnsw, hnsw-sq8, ivf-pq, "
                         "auto, or a faiss index_factory string (e.g. 'HNSW32,SQ8', 'IVF1024,PQ64')") from None


_HNSW_FLAT = re.compile(r"^HNSW(\d+),Flat$")


def make_index(spec: str, dim: int, params: HnswParams = HnswParams(), options: IndexOptions = IndexOptions(),
               vectors: VectorFile | None = None, trained_on: int = 0) -> VectorIndex:
    """A new empty index of the kind `spec` names, e.g. make_index("HNSW32,Flat", 512, params).
    Every spec but HNSW-Flat and Flat needs `vectors`, the file of its exact vectors."""
    match = _HNSW_FLAT.match(spec)
    if match:
        return HnswIndex(dim, HnswParams(int(match.group(1)), params.ef_construction, params.ef_search))
    return FaissIndex(dim, spec, params, options, vectors, trained_on)


def load_index(spec: str, path: Path, params: HnswParams = HnswParams(), options: IndexOptions = IndexOptions(),
               vectors: VectorFile | None = None, trained_on: int = 0) -> VectorIndex:
    """Reads an index of the kind `spec` names, written by its `save`."""
    match = _HNSW_FLAT.match(spec)
    if match:
        return HnswIndex.load(path, HnswParams(int(match.group(1)), params.ef_construction, params.ef_search))
    return FaissIndex.load(path, params, spec, options, vectors, trained_on)


def set_threads(n: int) -> None:
    """Sets the number of OpenMP threads FAISS uses for one call."""
    faiss.omp_set_num_threads(n)


def needs_training(spec: str, dim: int) -> bool:
    """Whether an index of this spec must be trained before vectors are added."""
    return not _HNSW_FLAT.match(spec) and not _factory(spec, dim).is_trained
