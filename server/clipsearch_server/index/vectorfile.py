"""The exact vectors of a compressed index, on disk: a float32 file addressed by label, read through mmap.

Compressed kinds (HNSW-SQ8, IVF-PQ, factory strings) keep only codes in RAM; they re-rank their
candidates, and exact scans (filters) read vectors, from this file. Row `label` holds that label's unit
vector (labels are dense and never reused, so a row never changes once written). The file is derived
from the store like the index: rows are rewritten whenever an index adds them, and `flush` is called
before a snapshot is written so every label the snapshot covers has its row on disk. Rows of deleted
labels stay (4 * dim bytes each) until the data directory is rebuilt.
The file only grows; a growth maps it again, and searches holding the previous map keep a valid view.
Growth allocates the disk blocks (posix_fallocate), so a full disk is an OSError (ENOSPC) when the file
grows, never a SIGBUS when a row is written through the map; `reserve` lets a writer grow it before its
store commit, so that indexing what was committed cannot fail for space.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["VectorFile"]


class VectorFile:
    """float32 rows (dim each) by label, in `path`, mapped read/write."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._lock = threading.Lock()
        self.path.touch(exist_ok=True)
        self._map = self._open(self.path.stat().st_size // (4 * dim))

    def _open(self, rows: int) -> np.memmap | None:
        if rows == 0:
            return None
        return np.memmap(self.path, dtype=np.float32, mode="r+", shape=(rows, self.dim))

    @property
    def rows(self) -> int:
        view = self._map
        return 0 if view is None else len(view)

    @property
    def disk_bytes(self) -> int:
        return self.rows * 4 * self.dim

    def write(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Writes unit vectors (n, dim) at rows `labels` (growing the file by doubling when needed)."""
        if not len(labels):
            return
        labels = np.asarray(labels, dtype=np.int64)
        with self._lock:
            self._grow(int(labels.max()) + 1)
            assert self._map is not None
            self._map[labels] = vectors

    def reserve(self, rows: int) -> None:
        """Makes room (allocated on disk) for rows below `rows`; OSError (ENOSPC) when the disk is full."""
        with self._lock:
            self._grow(rows)

    def _grow(self, need: int) -> None:
        if need <= self.rows:
            return
        rows = max(need, 2 * self.rows, 1024)
        size = self.path.stat().st_size
        with open(self.path, "r+b") as fh:
            try:
                os.posix_fallocate(fh.fileno(), size, rows * 4 * self.dim - size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # ENOSPC and the like: the caller's
                    raise
                os.ftruncate(fh.fileno(), rows * 4 * self.dim)  # a file system without fallocate
        self._map = self._open(rows)

    def read(self, labels: np.ndarray) -> np.ndarray:
        """The rows of `labels` (each below `rows`), as an in-memory (n, dim) array."""
        view = self._map
        if view is None:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.asarray(view[np.asarray(labels, dtype=np.int64)])

    def flush(self) -> None:
        """Makes every row written so far durable."""
        view = self._map
        if view is not None:
            view.flush()
