"""A collection: the durable store plus the derived vector index, for one model.

Owns the rules that span both layers:
- the collection is bound to one model (identity and dimension, recorded in the store on first use);
- writes go to the store first (durable on return), then to the index;
- replaced and deleted images are tombstoned in the index and filtered out of every search;
- a search joins index hits with the store; when tombstone filtering comes back short it widens a
  bounded number of rounds, then scans the live vectors exactly (never more than EXACT_SCAN_MAX);
- `search_many` runs several query vectors' first round as one batched index search (one faiss call,
  or one matrix product for an exact scan); a row that comes back short is completed by the single-query
  path. Pages, batches, multi-term vectors and collapse are built on it in search/query.py;
- a filtered search (`search_among`) gets the matching labels from the store's field index (search/filters.py)
  and plans per query: an exact scan over those labels' vectors when they are at most
  `filter_exact_max`, else the HNSW graph restricted to them with efSearch raised by 1/selectivity,
  and an exact scan when that comes back short. It returns min(k, matching images);
- an upsert of an image submitted before that id's deletion is skipped (the delete wins);
- with `--shard I/N` it holds only the images whose id hashes to shard I (clipsearch_core.shards): N
  is recorded in the store when the collection is created, a restart with another N is refused, and
  an upsert of an id owned by another shard is refused (FailedPrecondition), never written;
- the index is segmented (index/segments.py): new vectors land in a small exact growing part, searched
  together with the sealed HNSW part; a background seal moves them into the graph once the growing part
  holds `seal_at` vectors, and at each snapshot;
- a snapshot (index/snapshots.py) writes the sealed part with the label it covers, without copying it and
  without the write lock: writes go on meanwhile, into the growing part. On start the latest snapshot
  is loaded and only rows written after it are replayed into the growing part (no re-embedding);
- when tombstones pass `compact_ratio` of the index, a background rebuild makes a fresh graph from
  the store while searches go on against the old one, then swaps it in;
- field updates (`update_fields`) change an image's fields and metadata in the store only: its label and
  vector stay, so the index is untouched (cached filter results are dropped);
- with a shared PostgreSQL store the store given is this server's local mirror, and changes arrive
  through `apply_changes` (replication/follower.py) instead of `upsert`/`delete`.
- the index kind (`--index`, index/kinds.py) is recorded in the store when the collection is created and
  refused on mismatch like the model. Kinds that need training are served by an exact index until
  `train_min` vectors, then trained and swapped in by the same background rebuild (after catching up
  with the writes made meanwhile), and retrained after 10x growth; their exact vectors live in
  `vectors.f32` (index/vectorfile.py), read through mmap for re-ranking and exact scans.
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

from clipsearch_core.errors import FailedPrecondition, NotFound
from clipsearch_core.shards import ShardSpec
from clipsearch_server.index import kinds
from clipsearch_server.index.kinds import IndexReport, KindOptions
from clipsearch_server.index.segments import SegmentedIndex
from clipsearch_server.index.snapshots import Snapshots
from clipsearch_server.index.vector_index import (
    FaissIndex,
    HnswParams,
    SearchParams,
    VectorIndex,
    load_index,
    make_index,
    needs_training,
    normalize,
)
from clipsearch_server.index.vectorfile import VectorFile
from clipsearch_server.storage import fields as typed
from clipsearch_server.storage.records import (
    Change,
    ImageRecord,
    ImageStore,
    StoredImage,
    UpsertResult,
)
from clipsearch_server.storage.sqlite import SqliteStore, storage_errors

__all__ = ["Collection", "CollectionStats", "Hit", "unit_records"]

log = logging.getLogger(__name__)

WIDEN_ROUNDS = 3  # index searches per query before falling back to an exact scan (fetch doubles each round)
EXACT_SCAN_MAX = 200_000  # live images up to which a short search is completed by an exact scan
TRAIN_SAMPLE_MAX = 100_000  # vectors a kind is trained on (a strided sample), more for IVF with many lists


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    score: float
    uri: str
    metadata: dict[str, str]
    fields: dict = field(default_factory=dict)  # typed fields (fields.Fields), metadata included as strings
    label: int = -1  # the image's label in the index (search/query.py re-scores and collapses by it)


@dataclass(frozen=True)
class CollectionStats:
    count: int
    model: str
    dim: int
    index_type: str
    params: HnswParams
    stale_entries: int
    index: IndexReport | None = None


def unit_records(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """The records with their vectors scaled to unit length (normalized as one block, not one by one)."""
    if not records:
        return []
    units = normalize(np.stack([r.vector for r in records]))
    return [replace(r, vector=unit) for r, unit in zip(records, units)]


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
        kind: KindOptions = KindOptions(),
    ) -> None:
        self.model = model
        self.dim = dim
        self.params = params
        self.data_dir = Path(data_dir)
        self.compact_ratio = compact_ratio
        self.compact_min = compact_min
        self.filter_exact_max = filter_exact_max
        self.seal_at = seal_at
        self.kind = kind
        self._trains: dict[str, bool] = {}  # spec -> whether it needs training (cached faiss probe)
        self.store = store if store is not None else SqliteStore(self.data_dir / "images.sqlite3")
        self.shard = shard
        self._bind_model()
        self._bind_kind()
        self._bind_shard()
        self.vector_file = VectorFile(self.data_dir / "vectors.f32", dim) if kind.kind != "hnsw" else None
        self.snapshots = Snapshots(self.data_dir, self._read_snapshot, f"HNSW{params.m},Flat")
        self.loaded_from_snapshot = False
        self._snapshot_seq = 0
        self._write_lock = threading.RLock()  # one writer at a time: store, then index
        self._compacting = threading.Lock()  # one background rebuild (compaction, training) at a time
        self._rebuilding: str | None = None  # the running rebuild's reason
        self._failed_at = 0  # live count when a training failed: not tried again before it doubles
        self._compactor: threading.Thread | None = None
        self._sealer_running = threading.Lock()
        self._sealer: threading.Thread | None = None
        self.index = self._load()
        self._indexed_below = self.store.next_label()  # every label below it is in the index (or stale)
        self._live = int(self.store.count())
        self.generation = 0  # bumped by every write: cached filter results of an older generation are stale
        self._saved_at = (self.index.sealed_below, self.index.tombstones)
        log.info("collection ready: %d images, model %s, dim %d, index %s", self._live, model, dim,
                 self.index.sealed.description)
        self._maybe_compact()  # e.g. grown past --train-min while the server was down

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
                f"--data-dir (resharding is a rebuild: see docs/scaling.md)"
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

    def _bind_kind(self) -> None:
        """Checks --index (a factory string must build at this dimension) and records it with the
        collection, or refuses a server started with another kind than the collection's."""
        try:
            self._choose(0)
        except ValueError as exc:
            raise FailedPrecondition(f"--index {self.kind.kind!r}: {exc}") from None
        stored = self.store.get_meta("index_kind")
        if stored is None:
            stored = "hnsw" if self.store.count() else self.kind.kind  # collections from before --index: HNSW
            self.store.set_meta("index_kind", stored)
        if stored != self.kind.kind:
            raise FailedPrecondition(
                f"the collection in {self.data_dir} was created with --index {stored}; this server runs "
                f"--index {self.kind.kind}. Start it with --index {stored}, or use another --data-dir "
                "(a new kind means re-ingesting into a new collection).")

    def _choose(self, n: int) -> kinds.Choice:
        """The spec the collection should have at n vectors (raises ValueError for a bad factory string)."""
        choice = kinds.choose(self.kind, n, self.dim, self.params.m)
        if choice.spec not in self._trains:
            self._trains[choice.spec] = needs_training(choice.spec, self.dim)
        return choice

    def _read_snapshot(self, spec: str, path: Path, trained_on: int) -> VectorIndex:
        """Loads a snapshot this configuration can serve (else ValueError: the index is rebuilt from the
        store): the spec it would build (any nlist for ivf-pq), the exact phase of a kind that trains,
        or, with auto, any named kind (a background rebuild switches it when the choice changed)."""
        target = self._choose(self.store.count()).spec
        family = kinds.family(spec)
        same = spec == target or family == kinds.family(target) == "ivf-pq"
        exact_phase = spec == kinds.EXACT and self._trains[target]
        switching = self.kind.kind == "auto" and family in (*kinds.NAMED, "flat")
        if not (same or exact_phase or switching):
            raise ValueError(f"snapshot holds {spec!r}; this configuration builds {target!r}")
        return load_index(spec, path, self.params, self.kind.search, self.vector_file, trained_on)

    def _build(self, upto: int) -> VectorIndex:
        """A new sealed index of the spec the collection's size calls for, trained on a sample of the
        store when its kind needs it, holding the store's rows below `upto` (the long part: no lock)."""
        live = self.store.count()
        spec = self._choose(live).spec
        trains = self._trains[spec]
        if trains and live < kinds.train_min_for(self.kind, spec):
            spec, trains = kinds.EXACT, False  # too small to train: served exactly
        index = make_index(spec, self.dim, self.params, self.kind.search, self.vector_file,
                           trained_on=live if trains else 0)
        if trains:
            started = time.monotonic()
            sample = self._sample(upto, kinds.train_sample_for(spec, TRAIN_SAMPLE_MAX))
            index.train(sample)
            log.info("trained %s on %d vectors in %.2fs", spec, len(sample), time.monotonic() - started)
        self._add_from_store(index, 0, upto)
        return index

    def _sample(self, upto: int, size: int) -> np.ndarray:
        """About `size` store vectors below `upto`, evenly strided."""
        step = max(1, math.ceil(self.store.count() / size))
        parts = [vectors[::step] for _, vectors in self.store.iter_vectors(self.dim, 0, upto)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)

    def _load(self) -> SegmentedIndex:
        """The latest snapshot plus newer store rows in the growing part, or a fresh build from the store."""
        started = time.monotonic()
        sealed, covered = self.snapshots.read(self.dim)
        self.loaded_from_snapshot = sealed is not None
        if (isinstance(sealed, FaissIndex) and sealed.spec != kinds.EXACT and self.vector_file is not None
                and self.vector_file.rows < covered):
            # a snapshot copied from another replica (index/snapshot_share.py) comes without vectors.f32: its
            # exact vectors (re-ranking, exact scans) are written again from the store, not left as zeros
            for labels, vectors in self.store.iter_vectors(self.dim, 0, covered):
                self.vector_file.write(labels, vectors)
            self.vector_file.flush()
        if sealed is None:  # build the index directly: the whole store would not be a small growing part
            covered = self.store.next_label()
            sealed = self._build(covered)
        index = SegmentedIndex(sealed, covered)
        added = self._add_from_store(index, covered, None)
        stale = np.setdiff1d(index.labels(), self.store.live_labels(), assume_unique=True)
        index.remove(stale.tolist())
        log.info(
            "index loaded in %.2fs: %d from snapshot (labels < %d), %d replayed, %d tombstones",
            time.monotonic() - started, index.ntotal - added, covered, added, len(stale),
        )
        return index

    def _add_from_store(self, index: VectorIndex | SegmentedIndex, start: int, stop: int | None) -> int:
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
        unit = unit_records(records)
        with self._write_lock:
            if self.vector_file is not None:  # only compressed kinds keep exact vectors on disk
                self._reserve(self.store.next_label() + len(unit))
            result = self.store.upsert(unit)
            self._index_result(result)
        if result.skipped:
            log.info("skipped %d upserts of images deleted after submission: %s",
                     len(result.skipped), ", ".join(result.skipped[:5]))
        self._maybe_compact()
        self._maybe_seal()
        return len(records) - len(result.skipped)

    def _reserve(self, below: int) -> None:
        """Room on disk for the exact vectors of labels below `below`, before a store commit that adds
        them: a full disk then refuses the write (ResourceExhausted) instead of failing to index what
        was committed."""
        if self.vector_file is not None:
            with storage_errors():
                self.vector_file.reserve(below)

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
            self._reserve(max((c.label + 1 for c in changes if c.vector is not None), default=0))
            self._index_result(self.store.apply(changes, position))
        self._maybe_compact()
        self._maybe_seal()

    def update_fields(self, ids: Sequence[str], update: typed.Update) -> list[str]:
        """Changes the fields and metadata of the stored images among `ids` (one transaction; the index is
        untouched: same labels, same vectors); returns the ids updated. Durable when it returns."""
        self.check_owned(ids)
        with self._write_lock:
            updated = self.store.update_fields(ids, update)
            self.generation += 1  # cached filter results are stale
        return updated

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
            rows = [self._join(s.tolist(), row_labels.tolist(), exclude_id) for s, row_labels in zip(scores, labels)]
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
        for q, s, row_labels in zip(queries, scores, labels):
            hits = self._join(s.tolist(), row_labels.tolist(), exclude_id)
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

    def stats(self, report: bool = False) -> CollectionStats:
        """Counts, and with `report` the index's kind, training state and measured memory (which takes
        the index's read lock and may walk its lists: GetIndexStats asks for it, metrics do not)."""
        return CollectionStats(
            count=self._live,
            model=self.model,
            dim=self.dim,
            index_type=self.index.description,
            params=self.params,
            stale_entries=self.index.tombstones,
            index=self._index_report() if report else None,
        )

    def _index_report(self) -> IndexReport:
        index, rebuilding = self.index, self._rebuilding
        sealed = index.sealed
        choice = self._choose(self._live)
        if rebuilding in ("training", "retraining"):
            training = "training"
        elif sealed.spec == kinds.EXACT and self._trains[choice.spec]:
            training = "waiting-for-data"
        else:
            training = "trained" if sealed.trained_on else "not-needed"
        memory = index.memory_bytes()
        return IndexReport(
            kind=self.kind.kind, spec=sealed.spec, nlist=getattr(sealed, "nlist", 0),
            nprobe=self.kind.search.nprobe if getattr(sealed, "nlist", 0) else 0,
            rerank=self.kind.search.rerank if sealed.disk_bytes() else 0,
            memory_bytes=memory, disk_bytes=sealed.disk_bytes(),
            bytes_per_vector=memory / max(index.ntotal, 1), training=training, trained_on=sealed.trained_on,
            train_min=self.kind.train_min, choice=choice.why)

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

    def _rebuild_reason(self) -> str | None:
        index = self.index
        if index.tombstones >= max(self.compact_min, self.compact_ratio * index.ntotal):
            return "compaction"
        sealed = index.sealed
        if self._failed_at and self._live < 2 * self._failed_at:
            return None
        return kinds.rebuild_reason(self.kind, sealed.spec, sealed.trained_on, self._live,
                                    self._choose(self._live).spec)

    def _maybe_compact(self) -> None:
        """Starts a background rebuild when tombstones pile up or the kind's training calls for one."""
        reason = self._rebuild_reason()
        if reason is not None and self._compacting.acquire(blocking=False):
            self._rebuilding = reason
            self._compactor = threading.Thread(target=self._compact, args=(reason,), name=reason, daemon=True)
            self._compactor.start()

    def _compact(self, reason: str = "compaction") -> None:
        """Rebuilds the index from the store (without tombstones; trained when its kind needs it) while
        searches and writes go on against the current one, catches up with the writes made meanwhile,
        then swaps it in."""
        try:
            started = time.monotonic()
            upto = self.store.next_label()
            fresh = SegmentedIndex(self._build(upto), upto)  # the long part: no lock held
            with self._write_lock:  # catch up with writes made meanwhile (into the growing part), then swap
                self._add_from_store(fresh, upto, None)
                stale = np.setdiff1d(fresh.labels(), self.store.live_labels(), assume_unique=True)
                fresh.remove(stale.tolist())
                old, self.index = self.index, fresh
            log.info("%s: %d -> %d entries (%s) in %.2fs", reason, old.ntotal, fresh.ntotal,
                     fresh.sealed.description, time.monotonic() - started)
            self.snapshot(force=True)
        except Exception:
            log.exception("%s failed; the current index stays in use", reason)
            if reason != "compaction":
                self._failed_at = max(self._live, 1)
        finally:
            self._rebuilding = None
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
