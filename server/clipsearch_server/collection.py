"""A collection: the durable store plus the derived vector index, for one model.

Owns the rules that span both layers:
- the collection is bound to one model (identity and dimension, recorded in the store on first use);
- writes go to the store first (durable on return), then to the index;
- replaced and deleted images are tombstoned in the index and filtered out of every search;
- a search joins index hits with the store; when tombstone filtering comes back short it widens a
  bounded number of rounds, then scans the live vectors exactly (never more than EXACT_SCAN_MAX);
- `search_many` runs several query vectors' first round as one batched index search (one faiss call,
  or one matrix product for an exact scan); a row that comes back short is completed by the single-query
  path. Pages, batches, multi-term vectors and collapse are built on it in query.py;
- a filtered search (`search_among`) gets the matching labels from the store's field index (filters.py)
  and plans per query: an exact scan over those labels' vectors when they are at most
  `filter_exact_max`, else the HNSW graph restricted to them with efSearch raised by 1/selectivity,
  and an exact scan when that comes back short. It returns min(k, matching images);
- an upsert of an image submitted before that id's deletion is skipped (the delete wins);
- with `--shard I/N` it holds only the images whose id hashes to shard I (clipsearch_core.shards): N
  is recorded in the store when the collection is created, a restart with another N is refused, and
  an upsert of an id owned by another shard is refused (FailedPrecondition), never written;
- the index is segmented (segments.py): new vectors land in a small exact growing part, searched
  together with the sealed HNSW part; a background seal moves them into the graph once the growing part
  holds `seal_at` vectors, and at each snapshot;
- a snapshot (snapshots.py) writes the sealed part with the label it covers, without copying it and
  without the write lock: writes go on meanwhile, into the growing part. On start the latest snapshot
  is loaded and only rows written after it are replayed into the growing part (no re-embedding);
- when tombstones pass `compact_ratio` of the index, a background rebuild makes a fresh graph from
  the store while searches go on against the old one, then swaps it in;
- with a shared PostgreSQL store the store given is this server's local mirror, and changes arrive
  through `apply_changes` (replication.py) instead of `upsert`/`delete`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from clipsearch_core.shards import ShardSpec

from .errors import FailedPrecondition, NotFound
from .index import HnswIndex, HnswParams, SearchParams, make_index, normalize
from .segments import SegmentedIndex
from .snapshots import Snapshots
from .store import Change, ImageRecord, ImageStore, StoredImage, Store, UpsertResult

__all__ = ["Collection", "CollectionStats", "Hit"]

log = logging.getLogger(__name__)

WIDEN_ROUNDS = 3  # index searches per query before falling back to an exact scan (fetch doubles each round)
EXACT_SCAN_MAX = 200_000  # live images up to which a short search is completed by an exact scan


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    score: float
    uri: str
    metadata: dict[str, str]
    fields: dict = field(default_factory=dict)  # typed fields (fields.Fields), metadata included as strings
    label: int = -1  # the image's label in the index (query.py re-scores and collapses by it)


@dataclass(frozen=True)
class CollectionStats:
    count: int
    model: str
    dim: int
    index_type: str
    params: HnswParams
    stale_entries: int


class Collection:
    """Images of one model: durable store + vector index (+ snapshots and compaction)."""

    def __init__(
        self,
        data_dir: Path,
        model: str,
        dim: int,
        params: HnswParams = HnswParams(),
        compact_ratio: float = 0.2,
        compact_min: int = 1000,
        filter_exact_max: int = 10_000,
        seal_at: int = 20_000,
        store: ImageStore | None = None,
        shard: ShardSpec = ShardSpec(),
    ) -> None:
        self.model = model
        self.dim = dim
        self.params = params
        self.data_dir = Path(data_dir)
        self.compact_ratio = compact_ratio
        self.compact_min = compact_min
        self.filter_exact_max = filter_exact_max
        self.seal_at = seal_at
        self.spec = index_spec(params)
        self.store = store if store is not None else Store(self.data_dir / "images.sqlite3")
        self.snapshots = Snapshots(self.data_dir, self.spec, params)
        self.loaded_from_snapshot = False
        self._snapshot_seq = 0
        self.shard = shard
        self._bind_model()
        self._bind_shard()
        self._write_lock = threading.RLock()  # one writer at a time: store, then index
        self._compacting = threading.Lock()
        self._compactor: threading.Thread | None = None
        self._sealer_running = threading.Lock()
        self._sealer: threading.Thread | None = None
        self.index = self._load()
        self._indexed_below = self.store.next_label()  # every label below it is in the index (or stale)
        self._live = int(self.store.count())
        self.generation = 0  # bumped by every write: cached filter results of an older generation are stale
        self._saved_at = (self.index.sealed_below, self.index.tombstones)
        log.info("collection ready: %d images, model %s, dim %d", self._live, model, dim)

    # --- start-up ------------------------------------------------------------------------------

    def _bind_model(self) -> None:
        stored_model, stored_dim = self.store.get_meta("model"), self.store.get_meta("dim")
        if stored_model is None:
            self.store.set_meta("model", self.model)
            self.store.set_meta("dim", str(self.dim))
            return
        if stored_model != self.model or int(stored_dim or 0) != self.dim:
            raise FailedPrecondition(
                f"the index in {self.data_dir} was built with model {stored_model} (dim {stored_dim}); "
                f"this server runs {self.model} (dim {self.dim}). Use that model, or another --data-dir."
            )

    def _bind_shard(self) -> None:
        """Records the collection's shard count N on first use; refuses to open it with another N. Only N
        is recorded (a store shared by every shard, PostgreSQL, holds one N for all of them). A store
        written before sharding (no record, but images) holds the whole collection: N = 1."""
        stored = self.store.get_meta("shard_count")
        if stored is None:
            stored = str(self.shard.count if self.store.count() == 0 else 1)
            self.store.set_meta("shard_count", stored)
        if int(stored) != self.shard.count:
            raise FailedPrecondition(
                f"the collection in {self.data_dir} was created with {stored} shard(s) (fixed at creation); this "
                f"server was started with --shard {self.shard}. Start it with --shard I/{stored}, or use another "
                f"--data-dir (resharding is a rebuild: see the README's 'Running several servers')"
            )

    def check_owned(self, ids: Iterable[str]) -> None:
        """Refuses ids that hash to another shard: a misrouted write never lands in the wrong shard."""
        if self.shard.count == 1:
            return
        wrong = [image_id for image_id in ids if not self.shard.owns(image_id)]
        if wrong:
            raise FailedPrecondition(
                f"this server holds shard {self.shard} and {len(wrong)} id(s) belong to other shards "
                f"(e.g. {wrong[0]!r}); send writes through the router (`clipsearch router`), which routes each id"
            )

    def _load(self) -> SegmentedIndex:
        """The latest snapshot plus newer store rows in the growing part, or a fresh build from the store."""
        started = time.monotonic()
        sealed, covered = self.snapshots.read(self.dim)
        self.loaded_from_snapshot = sealed is not None
        if sealed is None:  # build the graph directly: the whole store would not be a small growing part
            sealed = make_index(self.spec, self.dim, self.params)
            covered = self.store.next_label()
            self._add_from_store(sealed, 0, covered)
        assert isinstance(sealed, HnswIndex)
        index = SegmentedIndex(sealed, covered)
        added = self._add_from_store(index, covered, None)
        stale = np.setdiff1d(index.labels(), self.store.live_labels(), assume_unique=True)
        index.remove(stale.tolist())
        log.info(
            "index loaded in %.2fs: %d from snapshot (labels < %d), %d replayed, %d tombstones",
            time.monotonic() - started, index.ntotal - added, covered, added, len(stale),
        )
        return index

    def _add_from_store(self, index: HnswIndex | SegmentedIndex, start: int, stop: int | None) -> int:
        added = 0
        for labels, vectors in self.store.iter_vectors(self.dim, start, stop):
            index.add(labels, vectors)
            added += len(labels)
        return added

    # --- writes --------------------------------------------------------------------------------

    def check_model(self, model: str, dim: int) -> None:
        """Refuses vectors from a model other than the collection's."""
        if model != self.model or dim != self.dim:
            raise FailedPrecondition(
                f"vectors come from model {model!r} (dim {dim}) but the index holds {self.model!r} "
                f"(dim {self.dim}); run the workers with the server's model"
            )

    def upsert(self, records: Sequence[ImageRecord]) -> int:
        """Inserts or replaces images by id; durable when it returns. Returns the number of records
        written: records of images deleted after their submission are skipped, not counted."""
        self.check_owned(r.id for r in records)
        unit = [replace(r, vector=normalize(r.vector[None, :])[0]) for r in records]
        with self._write_lock:
            result = self.store.upsert(unit)
            self._index_result(result)
        if result.skipped:
            log.info("skipped %d upserts of images deleted after submission: %s",
                     len(result.skipped), ", ".join(result.skipped[:5]))
        self._maybe_compact()
        self._maybe_seal()
        return len(records) - len(result.skipped)

    def _index_result(self, result: UpsertResult) -> None:
        """Indexes a store write's new vectors and tombstones the labels that left (write lock held)."""
        added, stale = result.added, result.stale
        if added:
            labels = np.fromiter((label for label, _ in added), dtype=np.int64, count=len(added))
            self.index.add(labels, np.stack([vector for _, vector in added]))
            self._indexed_below = max(self._indexed_below, int(labels.max()) + 1)
        self.index.remove(stale)
        self._live += len(added) - len(stale)
        self.generation += 1  # fields may have changed too: cached filter results are stale

    def apply_changes(self, changes: Sequence[Change], position: int) -> None:
        """Applies changes replicated from the shared store: to the mirror store (with `position`, in one
        transaction), then to the index."""
        with self._write_lock:
            self._index_result(self.store.apply(changes, position))
        self._maybe_compact()
        self._maybe_seal()

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Deletes images by id; returns the ids that existed. Durable when it returns."""
        with self._write_lock:
            removed = self.store.delete(ids)
            self.index.remove(label for _, label in removed)
            self._live -= len(removed)
            self.generation += 1
        self._maybe_compact()
        return [image_id for image_id, _ in removed]

    # --- reads ---------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, exclude_id: str | None = None) -> list[Hit]:
        """The k best live images for a query vector, best first."""
        index = self.index  # a compaction may swap it; this search keeps the one it started with
        want = k + (1 if exclude_id else 0)
        reachable = min(k, max(self._live - (1 if exclude_id else 0), 0))
        fetch = want
        hits: list[Hit] = []
        for _ in range(WIDEN_ROUNDS):  # filtered HNSW search can come back short: widen, bounded
            scores, labels = index.search(query[None, :], fetch)
            hits = self._join(scores[0].tolist(), labels[0].tolist(), exclude_id)
            if len(hits) >= reachable or fetch >= index.ntotal:
                return hits[:k]
            fetch = min(fetch * 2, index.ntotal)
        if self._live > EXACT_SCAN_MAX:
            log.warning("search came back short (%d of %d) on %d images; no exact scan", len(hits), k, self._live)
            return hits[:k]
        return self._exact(query, want, exclude_id)[:k]

    def search_among(self, query: np.ndarray, k: int, matching: np.ndarray,
                     exclude_id: str | None = None) -> list[Hit]:
        """The k best among the live images with these labels (a filter's matches), best first.
        Returns min(k, number of them) hits: exact scan when few, else HNSW restricted to them, with an
        exact scan when the graph comes back short."""
        if exclude_id:
            label = self.store.label_of(exclude_id)
            matching = matching[matching != label] if label is not None else matching
        return self.search_many(query[None, :], k, matching, exclude_id)[0]

    def search_many(self, queries: np.ndarray, k: int, matching: np.ndarray | None = None,
                    exclude_id: str | None = None) -> list[list[Hit]]:
        """The k best for each query row (among the `matching` labels when given), best first. The
        first round is one batched search for all rows; a row that comes back short is completed
        alone (widening, then an exact scan), so each row gets min(k, reachable) hits."""
        index = self.index
        if matching is None:
            scores, labels = index.search(queries, k)
            rows = [self._join(s.tolist(), l.tolist(), exclude_id) for s, l in zip(scores, labels)]
            reachable = min(k, max(self._live - (1 if exclude_id else 0), 0))
            return [hits if len(hits) >= reachable else self.search(q, k, exclude_id)
                    for q, hits in zip(queries, rows)]
        matching = matching[matching < self._indexed_below]  # committed but not yet indexed: not yet searchable
        want = min(k, len(matching))
        if want == 0:
            return [[] for _ in queries]
        if len(matching) <= self.filter_exact_max:
            return self._exact_among(index, queries, k, matching, exclude_id)
        selectivity = len(matching) / max(index.ntotal, 1)
        ef = min(max(index.ntotal, k), int(math.ceil(max(self.params.ef_search, k) / selectivity)))
        scores, labels = index.search(queries, k, SearchParams(ef_search=ef, include=matching))
        out = []
        for q, s, l in zip(queries, scores, labels):
            hits = self._join(s.tolist(), l.tolist(), exclude_id)
            if len(hits) < want:
                log.info("filtered graph search came back short (%d of %d); exact scan over %d matches",
                         len(hits), want, len(matching))
                hits = self._exact_among(index, q[None, :], k, matching, exclude_id)[0]
            out.append(hits[:k])
        return out

    def vectors_of(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, unit vectors) of those labels the index holds, in no particular order."""
        return self.index.vectors(labels)

    def _exact_among(self, index: SegmentedIndex, queries: np.ndarray, k: int, matching: np.ndarray,
                     exclude_id: str | None) -> list[list[Hit]]:
        """Each query row's k best among `matching`, by one matrix product per chunk of vectors."""
        chunks = (index.vectors(matching[start:start + 50_000]) for start in range(0, len(matching), 50_000))
        tops = _top(chunks, queries, k + 8)  # a few spare for images deleted since the filter ran
        return [self._join(scores, labels, exclude_id)[:k] for scores, labels in tops]

    def _join(self, scores: list[float], labels: list[int], exclude_id: str | None) -> list[Hit]:
        live: dict[int, StoredImage] = self.store.by_labels([x for x in labels if x >= 0])  # stale labels are absent
        return [
            Hit(live[label].id, float(score), live[label].uri, live[label].metadata, live[label].fields, label)
            for score, label in zip(scores, labels)
            if label in live and live[label].id != exclude_id
        ]

    def _exact(self, query: np.ndarray, want: int, exclude_id: str | None) -> list[Hit]:
        """The `want` best live images by a scan over every live vector in the store."""
        scores, labels = _top(self.store.iter_vectors(self.dim), query[None, :], want)[0]
        return self._join(scores, labels, exclude_id)

    def vector_of(self, image_id: str) -> np.ndarray:
        vector = self.store.vector_of(image_id)
        if vector is None:
            raise NotFound(f"no indexed image has id {image_id!r}")
        return vector

    def stats(self) -> CollectionStats:
        return CollectionStats(
            count=self._live,
            model=self.model,
            dim=self.dim,
            index_type=self.index.description,
            params=self.params,
            stale_entries=self.index.tombstones,
        )

    # --- snapshots and compaction --------------------------------------------------------------

    def seal(self) -> int:
        """Moves the growing part into the HNSW graph (in chunks; writes and searches go on)."""
        return self.index.seal()

    def _maybe_seal(self) -> None:
        if self.index.growing.ntotal >= self.seal_at and self._sealer_running.acquire(blocking=False):
            self._sealer = threading.Thread(target=self._seal_in_background, name="seal", daemon=True)
            self._sealer.start()

    def _seal_in_background(self) -> None:
        try:
            started = time.monotonic()
            moved = self.seal()
            log.info("sealed %d vectors into the graph in %.2fs", moved, time.monotonic() - started)
        except Exception:
            log.exception("sealing failed; the vectors stay in the growing part")
        finally:
            self._sealer_running.release()

    def snapshot(self, force: bool = False) -> bool:
        """Seals the growing part, then writes the sealed part atomically with the label it covers, if
        anything changed. Searches and writes go on throughout (writes into the growing part)."""
        self.seal()
        with self._write_lock:
            index = self.index
            state = (index.sealed_below, index.tombstones)
            if state == self._saved_at and not force:
                return False
            self._snapshot_seq += 1
            sequence = self._snapshot_seq
            self._saved_at = state
        try:
            self.snapshots.write(index, sequence)  # serialized; never deletes the current file
        except BaseException:
            self._saved_at = (-1, -1)  # not saved: the next periodic snapshot tries again
            raise
        return True

    def _maybe_compact(self) -> None:
        index = self.index
        if index.tombstones < max(self.compact_min, self.compact_ratio * index.ntotal):
            return
        if self._compacting.acquire(blocking=False):
            self._compactor = threading.Thread(target=self._compact, name="compaction", daemon=True)
            self._compactor.start()

    def _compact(self) -> None:
        """Rebuilds the graph without tombstones; searches and writes go on meanwhile."""
        try:
            started = time.monotonic()
            graph = make_index(self.spec, self.dim, self.params)
            upto = self.store.next_label()
            self._add_from_store(graph, 0, upto)  # the long part: no lock held
            assert isinstance(graph, HnswIndex)
            fresh = SegmentedIndex(graph, upto)
            with self._write_lock:  # catch up with writes made meanwhile (into the growing part), then swap
                self._add_from_store(fresh, upto, None)
                stale = np.setdiff1d(fresh.labels(), self.store.live_labels(), assume_unique=True)
                fresh.remove(stale.tolist())
                old, self.index = self.index, fresh
            log.info("compaction: %d -> %d entries in %.2fs", old.ntotal, fresh.ntotal, time.monotonic() - started)
            self.snapshot(force=True)
        except Exception:
            log.exception("compaction failed; the current index stays in use")
        finally:
            self._compacting.release()

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        thread = self._compactor
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        self.wait_for_compaction()
        sealer = self._sealer
        if sealer is not None:
            sealer.join()
        self.store.close()


def index_spec(params: HnswParams) -> str:
    """The FAISS spec of a collection's graph (also recorded in a shared store, pgstore.py)."""
    return f"HNSW{params.m},Flat"


def _top(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
         want: int) -> list[tuple[list[float], list[int]]]:
    """For each query row, the `want` best (score, label) pairs over (labels, vectors) chunks, by score
    then label: one matrix product per chunk for all rows, at most `want` candidates kept between chunks."""
    units = normalize(np.atleast_2d(queries))
    best_scores = [np.empty(0, dtype=np.float32) for _ in units]
    best_labels = [np.empty(0, dtype=np.int64) for _ in units]
    for labels, vectors in chunks:
        scores = vectors @ units.T
        for row in range(len(units)):
            row_scores = np.concatenate([best_scores[row], scores[:, row]])
            row_labels = np.concatenate([best_labels[row], labels])
            if len(row_scores) > want:
                keep = np.argpartition(-row_scores, want)[:want]
                row_scores, row_labels = row_scores[keep], row_labels[keep]
            best_scores[row], best_labels[row] = row_scores, row_labels
    out = []
    for row_scores, row_labels in zip(best_scores, best_labels):
        order = np.lexsort((row_labels, -row_scores))
        out.append((row_scores[order].tolist(), row_labels[order].tolist()))
    return out
