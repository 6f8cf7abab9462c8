"""A collection: the durable store plus the derived HNSW index, for one model.

Owns the rules that span both layers:
- the collection is bound to one model (identity and dimension, recorded in the store on first use);
- writes go to the store first (durable on return), then to the index;
- replaced and deleted images are tombstoned in the index and filtered out of every search;
- the index is snapshotted atomically with the label it covers; on start the latest snapshot is
  loaded and only rows written after it are added (no re-embedding, no full rebuild);
- when tombstones pass `compact_ratio` of the index, a background rebuild makes a fresh graph from
  the store while searches go on against the old one, then swaps it in.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FailedPrecondition, NotFound
from .files import write_text_durably
from .index import HnswIndex, HnswParams, normalize
from .store import ImageRecord, Store

__all__ = ["Collection", "CollectionStats", "Hit"]

log = logging.getLogger(__name__)

SNAPSHOT_POINTER = "snapshot.json"


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    score: float
    uri: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class CollectionStats:
    count: int
    model: str
    dim: int
    index_type: str
    params: HnswParams
    stale_entries: int


class Collection:
    """Images of one model: durable store + HNSW index (+ snapshots and compaction)."""

    def __init__(
        self,
        data_dir: Path,
        model: str,
        dim: int,
        params: HnswParams = HnswParams(),
        compact_ratio: float = 0.2,
        compact_min: int = 1000,
    ) -> None:
        self.model = model
        self.dim = dim
        self.params = params
        self.data_dir = Path(data_dir)
        self.compact_ratio = compact_ratio
        self.compact_min = compact_min
        self.store = Store(self.data_dir / "images.sqlite3")
        self._bind_model()
        self._write_lock = threading.RLock()  # one writer at a time: store, then index
        self._compacting = threading.Lock()
        self._compactor: threading.Thread | None = None
        self.index = self._load()
        self._live = int(self.store.count())
        self._saved_at = (self.store.next_label(), self.index.tombstones)
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

    def _load(self) -> HnswIndex:
        """The latest snapshot brought up to date from the store, or a fresh build from the store."""
        started = time.monotonic()
        index, covered = self._read_snapshot()
        if index is None:
            index, covered = HnswIndex(self.dim, self.params), 0
        added = self._add_from_store(index, covered, None)
        stale = np.setdiff1d(index.labels(), self.store.live_labels(), assume_unique=True)
        index.remove(stale.tolist())
        log.info(
            "index loaded in %.2fs: %d from snapshot (labels < %d), %d replayed, %d tombstones",
            time.monotonic() - started, index.ntotal - added, covered, added, len(stale),
        )
        return index

    def _read_snapshot(self) -> tuple[HnswIndex | None, int]:
        pointer = self.data_dir / SNAPSHOT_POINTER
        if not pointer.exists():
            return None, 0
        try:
            info = json.loads(pointer.read_text())
            index = HnswIndex.load(self.data_dir / info["file"], self.params)
            if index.dim != self.dim:
                raise ValueError(f"snapshot has dim {index.dim}")
            return index, int(info["covers_labels_below"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("ignoring snapshot (%s); rebuilding the index from the store", exc)
            return None, 0

    def _add_from_store(self, index: HnswIndex, start: int, stop: int | None) -> int:
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
        """Inserts or replaces images by id; durable when it returns. Returns the number of records written."""
        unit = [ImageRecord(r.id, normalize(r.vector[None, :])[0], r.uri, r.metadata) for r in records]
        with self._write_lock:
            added, stale = self.store.upsert(unit)
            if added:
                labels = np.fromiter((label for label, _ in added), dtype=np.int64, count=len(added))
                self.index.add(labels, np.stack([vector for _, vector in added]))
            self.index.remove(stale)
            self._live += len(added) - len(stale)
        self._maybe_compact()
        return len(records)

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Deletes images by id; returns the ids that existed. Durable when it returns."""
        with self._write_lock:
            removed = self.store.delete(ids)
            self.index.remove(label for _, label in removed)
            self._live -= len(removed)
        self._maybe_compact()
        return [image_id for image_id, _ in removed]

    # --- reads ---------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, exclude_id: str | None = None) -> list[Hit]:
        """The k best live images for a query vector, best first."""
        index = self.index  # a compaction may swap it; this search keeps the one it started with
        fetch = k + (1 if exclude_id else 0)
        while True:
            scores, labels = index.search(query[None, :], fetch)
            found = [int(x) for x in labels[0] if x >= 0]
            live = self.store.by_labels(found)  # a label replaced since the search is absent here
            hits = [
                Hit(live[label].id, float(score), live[label].uri, live[label].metadata)
                for score, label in zip(scores[0].tolist(), labels[0].tolist())
                if label in live and live[label].id != exclude_id
            ]
            # Filtered HNSW search can come back short; widen until k or the whole index.
            if len(hits) >= k or fetch >= index.ntotal:
                return hits[:k]
            fetch = min(fetch * 2, index.ntotal)

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

    def snapshot(self, force: bool = False) -> bool:
        """Writes the index atomically with the label it covers, if anything changed. Searches go on."""
        with self._write_lock:  # no writes while the index is serialized
            state = (self.store.next_label(), self.index.tombstones)
            if state == self._saved_at and not force:
                return False
            covered = state[0]
            name = f"index-{covered}.faiss"
            self.index.save(self.data_dir / name)
            write_text_durably(self.data_dir / SNAPSHOT_POINTER, json.dumps({"file": name, "covers_labels_below": covered}))
            self._saved_at = state
        for old in self.data_dir.glob("index-*.faiss"):
            if old.name != name:
                old.unlink(missing_ok=True)
        log.info("snapshot written: %s (%d vectors)", name, self.index.ntotal)
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
            fresh = HnswIndex(self.dim, self.params)
            upto = self.store.next_label()
            self._add_from_store(fresh, 0, upto)  # the long part: no lock held
            with self._write_lock:  # catch up with writes made meanwhile, then swap
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
        self.store.close()
