"""The segmented index: a sealed part (HNSW or any other kind) plus a small growing part, so snapshots never stall
writes.

Design (after Milvus' sealed and growing segments):
- `add` puts new vectors into the growing part, an exact flat inner-product index (`FlatIndex`, numpy)
  over the labels added since the last seal. Writes never touch the HNSW graph, so they never wait
  for anything that holds the graph: a snapshot serializing it, or a seal adding to it.
- `search` searches both parts and merges the two result lists by score, then label (a label in both,
  briefly during a seal, counts once). `SearchParams.include` (filters) applies to both parts.
- `remove` removes (or tombstones) the label in the sealed part and deletes the row from the growing
  part; it does both because a seal may be carrying the label over right now, and a seal removes
  again, after its adds, the labels removed while it ran (kinds that delete for real would keep them).
- `seal` copies the growing rows, adds them to the HNSW graph in chunks (each chunk takes the graph's
  write lock, so searches interleave), then drops them from the growing part and advances
  `sealed_below`: every label below it is in the sealed part or was removed; labels only grow.
- a snapshot (snapshots.py) writes the sealed part inside `sealed_part()`, which holds the seal mutex
  (seals wait, writes do not), while the graph's save holds its read lock (searches share it); nothing
  is cloned, and the file records the `sealed_below` it covers. On restart the owner loads the file and replays
  store rows from that label on into the growing part (the store is the source of truth).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np

from .vector_index import SearchParams, VectorIndex, normalize

__all__ = ["FlatIndex", "SegmentedIndex"]

SEAL_CHUNK = 1000  # vectors added to the graph per write-lock hold during a seal


class FlatIndex:
    """An exact inner-product index over unit vectors in a growable numpy buffer. Removal deletes rows.
    Mutations take a lock; searches read a consistent (labels, vectors) view without it."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        # (labels, buffer): rows [:len(labels)] of the buffer are in use. Replaced as one tuple (a reader
        # never pairs one version's labels with another's rows); a buffer never changes below len(labels).
        self._state = (np.empty(0, dtype=np.int64), np.empty((64, dim), dtype=np.float32))

    @property
    def ntotal(self) -> int:
        return len(self._state[0])

    def _view(self) -> tuple[np.ndarray, np.ndarray]:
        labels, vectors = self._state
        return labels, vectors[:len(labels)]

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        with self._lock:
            held, buffer = self._state
            n, m = len(held), len(labels)
            if n + m > len(buffer):
                grown = np.empty((max(2 * len(buffer), n + m), self.dim), dtype=np.float32)
                grown[:n] = buffer[:n]
                buffer = grown
            buffer[n:n + m] = normalize(vectors)
            self._state = (np.concatenate([held, labels]), buffer)

    def remove(self, labels: Iterable[int]) -> None:
        gone = np.fromiter(labels, dtype=np.int64)
        with self._lock:
            held, buffer = self._state
            keep = ~np.isin(held, gone)
            if keep.all():
                return
            rows = buffer[:len(held)][keep]
            fresh = np.empty((max(64, 2 * len(rows)), self.dim), dtype=np.float32)
            fresh[:len(rows)] = rows
            self._state = (held[keep], fresh)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """A copy of every (label, vector) row now held."""
        labels, vectors = self._view()
        return labels.copy(), vectors.copy()

    def vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        held, vectors = self._view()
        rows = np.isin(held, labels)
        return held[rows], vectors[rows]

    def search(self, queries: np.ndarray, k: int, include: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels), each (n, k), best first (ties: smaller label first); missing results are -1."""
        labels, vectors = self._view()
        if include is not None:
            rows = np.isin(labels, include)
            labels, vectors = labels[rows], vectors[rows]
        scores = normalize(queries) @ vectors.T  # (n, rows)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_labels = np.full((len(queries), k), -1, dtype=np.int64)
        for q in range(len(queries)):
            order = np.lexsort((labels, -scores[q]))[:k]
            out_scores[q, :len(order)] = scores[q, order]
            out_labels[q, :len(order)] = labels[order]
        return out_scores, out_labels


class SegmentedIndex:
    """A sealed index of any kind (labels below `sealed_below`) plus a growing `FlatIndex` (newer labels)."""

    def __init__(self, sealed: VectorIndex, sealed_below: int) -> None:
        self.sealed = sealed
        self.growing = FlatIndex(sealed.dim)
        self.dim = sealed.dim
        self.params = sealed.params
        self.sealed_below = sealed_below
        self._sealing = threading.Lock()  # one seal or one snapshot write at a time
        self._removals = threading.Lock()  # orders a remove against the start and end of a seal
        self._removed_while_sealing: set[int] | None = None  # None: no seal is carrying rows over

    @property
    def description(self) -> str:
        return f"{self.sealed.description} + growing flat part"

    @property
    def ntotal(self) -> int:
        """Entries in both parts, tombstoned ones included (a label being sealed counts twice)."""
        return self.sealed.ntotal + self.growing.ntotal

    @property
    def tombstones(self) -> int:
        return self.sealed.tombstones

    def memory_bytes(self) -> int:
        return self.sealed.memory_bytes() + self.growing.ntotal * (4 * self.dim + 8)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, index has {self.dim}")
        self.growing.add(labels, vectors)

    def remove(self, labels: Iterable[int]) -> None:
        labels = [int(x) for x in labels]
        if labels:
            with self._removals:
                if self._removed_while_sealing is not None:
                    self._removed_while_sealing.update(labels)
                self.sealed.remove(labels)
                self.growing.remove(labels)

    def search(self, queries: np.ndarray, k: int,
               params: SearchParams = SearchParams()) -> tuple[np.ndarray, np.ndarray]:
        """Both parts' k best, merged by score then label; missing results are -1."""
        g_scores, g_labels = self.growing.search(queries, k, params.include)
        s_scores, s_labels = self.sealed.search(queries, k, params)
        scores = np.concatenate([s_scores, g_scores], axis=1)
        labels = np.concatenate([s_labels, g_labels], axis=1)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_labels = np.full((len(queries), k), -1, dtype=np.int64)
        for q in range(len(queries)):
            found = labels[q] >= 0
            row_scores, row_labels = scores[q][found], labels[q][found]
            order = np.lexsort((row_labels, -row_scores))
            _, first = np.unique(row_labels[order], return_index=True)  # a label in both parts counts once
            order = order[np.sort(first)][:k]
            out_scores[q, :len(order)] = row_scores[order]
            out_labels[q, :len(order)] = row_labels[order]
        return out_scores, out_labels

    def labels(self) -> np.ndarray:
        return np.union1d(self.sealed.labels(), self.growing.contents()[0])

    def vectors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.asarray(labels, dtype=np.int64)
        g_labels, g_vectors = self.growing.vectors(labels)
        rest = labels[~np.isin(labels, g_labels)]
        if not len(rest):
            return g_labels, g_vectors
        s_labels, s_vectors = self.sealed.vectors(rest)
        return np.concatenate([s_labels, g_labels]), np.concatenate([s_vectors, g_vectors])

    def seal(self, chunk: int = SEAL_CHUNK) -> int:
        """Moves the growing rows into the HNSW graph, `chunk` at a time. Returns how many moved."""
        with self._sealing:
            with self._removals:
                labels, vectors = self.growing.contents()
                self._removed_while_sealing = set()
            for start in range(0, len(labels), chunk):
                self.sealed.add(labels[start:start + chunk], vectors[start:start + chunk])
            with self._removals:  # kinds that delete for real (IVF) would resurrect rows removed meanwhile
                removed, self._removed_while_sealing = self._removed_while_sealing, None
                self.sealed.remove(sorted(removed))
            if len(labels):
                self.sealed_below = max(self.sealed_below, int(labels.max()) + 1)
                self.growing.remove(labels.tolist())
            return len(labels)

    @contextmanager
    def sealed_part(self) -> Iterator[tuple[VectorIndex, int]]:
        """(sealed part, the label bound it covers), held still for a snapshot: seals wait meanwhile,
        writes go on (to the growing part) and so do searches."""
        with self._sealing:
            yield self.sealed, self.sealed_below
