"""A collection: the durable store plus the derived HNSW index, for one model.

Owns the rules that span both layers: the collection is bound to one model (identity and
dimension, recorded in the store on first use), writes go to the store first and then to the
index, and searches skip index entries whose label is no longer live in the store.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FailedPrecondition, NotFound
from .index import HnswIndex, HnswParams, normalize
from .store import ImageRecord, Store

__all__ = ["Collection", "CollectionStats", "Hit"]

log = logging.getLogger(__name__)


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
    """Images of one model: durable store + HNSW index."""

    def __init__(self, data_dir: Path, model: str, dim: int, params: HnswParams = HnswParams()) -> None:
        self.model = model
        self.dim = dim
        self.store = Store(Path(data_dir) / "images.sqlite3")
        self._bind_model()
        self.index = HnswIndex(dim, params)
        for labels, vectors in self.store.iter_vectors(dim):
            self.index.add(labels, vectors)
        self._live = self.index.ntotal  # derived from the store; kept current by upsert
        self._write_lock = threading.Lock()  # one writer at a time: store, then index, then _live
        log.info("collection ready: %d images, model %s, dim %d", self.index.ntotal, model, dim)

    def _bind_model(self) -> None:
        stored_model, stored_dim = self.store.get_meta("model"), self.store.get_meta("dim")
        if stored_model is None:
            self.store.set_meta("model", self.model)
            self.store.set_meta("dim", str(self.dim))
            return
        if stored_model != self.model or int(stored_dim or 0) != self.dim:
            raise FailedPrecondition(
                f"the index in {self.store.path.parent} was built with model {stored_model} (dim {stored_dim}); "
                f"this server runs {self.model} (dim {self.dim}). Use that model, or another --data-dir."
            )

    def check_model(self, model: str, dim: int) -> None:
        """Refuses vectors from a model other than the collection's."""
        if model != self.model or dim != self.dim:
            raise FailedPrecondition(
                f"vectors come from model {model!r} (dim {dim}) but the index holds {self.model!r} "
                f"(dim {self.dim}); run the workers with the server's model"
            )

    def upsert(self, records: Sequence[ImageRecord]) -> int:
        """Inserts or replaces images by id. Returns the number of records written."""
        unit = [ImageRecord(r.id, normalize(r.vector[None, :])[0], r.uri, r.metadata) for r in records]
        with self._write_lock:
            added, stale = self.store.upsert(unit)
            if added:
                labels = np.fromiter((label for label, _ in added), dtype=np.int64, count=len(added))
                self.index.add(labels, np.stack([vector for _, vector in added]))
            self._live += len(added) - len(stale)
        return len(records)

    def search(self, query: np.ndarray, k: int, exclude_id: str | None = None) -> list[Hit]:
        """The k best live images for a query vector, best first."""
        total = self.index.ntotal
        if total == 0:
            return []
        fetch = min(k + (1 if exclude_id else 0) + self.stale_entries, total)
        while True:
            scores, labels = self.index.search(query[None, :], fetch)
            found = [int(x) for x in labels[0] if x >= 0]
            live = self.store.by_labels(found)
            hits = [
                Hit(live[label].id, float(score), live[label].uri, live[label].metadata)
                for score, label in zip(scores[0], labels[0])
                if int(label) in live and live[int(label)].id != exclude_id
            ]
            if len(hits) >= k or fetch >= total:
                return hits[:k]
            fetch = min(fetch * 2, total)

    def vector_of(self, image_id: str) -> np.ndarray:
        vector = self.store.vector_of(image_id)
        if vector is None:
            raise NotFound(f"no indexed image has id {image_id!r}")
        return vector

    @property
    def stale_entries(self) -> int:
        """Index entries whose image was replaced since the index was built."""
        return max(0, self.index.ntotal - self._live)

    def stats(self) -> CollectionStats:
        return CollectionStats(
            count=self._live,
            model=self.model,
            dim=self.dim,
            index_type=self.index.description,
            params=self.index.params,
            stale_entries=self.stale_entries,
        )

    def close(self) -> None:
        self.store.close()
