"""Index snapshot files and their pointer, in a collection's data directory.

A snapshot is `index-<L>.faiss` (the index covering every label below L) plus `snapshot.json`, the
pointer naming the current file with the index's faiss spec and the collection size it was trained for
(kinds.py); the owner's `loader` reads it and may refuse it (then the index is rebuilt from the store).
Only the sealed part of the segmented index is written
(segments.py): held still by `sealed_part()` (seals wait; writes go to the growing part and searches go
on), not copied; L is the label bound it covers, and newer rows are replayed from the store on start.
The caller passes a sequence number taken under its write lock.
Writing the file, moving the pointer and deleting old files happen under one lock, so overlapping
callers (periodic snapshot, compaction, shutdown) are serialized; a write older than the last one
written is dropped, and cleanup never deletes the file the pointer names. Temporary files of saves
that did not finish (a full disk, a kill -9 mid-write) are deleted on start and after a failed save.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Callable

from .files import write_text_durably
from .segments import SegmentedIndex
from .vector_index import VectorIndex

__all__ = ["SNAPSHOT_POINTER", "Snapshots"]

log = logging.getLogger(__name__)

SNAPSHOT_POINTER = "snapshot.json"


class Snapshots:
    """Reads and writes the snapshots of one data directory."""

    def __init__(self, data_dir: Path, loader: Callable[[str, Path, int], VectorIndex], default_spec: str) -> None:
        """loader(spec, path, trained_on) reads one index file, raising ValueError to refuse it;
        default_spec: the spec of pointers written before specs were recorded."""
        self.data_dir = Path(data_dir)
        self.loader = loader
        self.default_spec = default_spec
        self._lock = threading.Lock()
        self._written = -1  # sequence number of the last snapshot written
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        """Deletes the temporary files of saves that never finished (each as large as an index)."""
        for tmp in [*self.data_dir.glob("index-*.faiss.tmp"), self.data_dir / (SNAPSHOT_POINTER + ".tmp")]:
            if tmp.exists():
                log.info("deleting %s, left by a snapshot that did not finish", tmp.name)
                tmp.unlink(missing_ok=True)

    @property
    def pointer(self) -> Path:
        return self.data_dir / SNAPSHOT_POINTER

    def current_file(self) -> str | None:
        """The file name the pointer names, or None without a (readable) pointer."""
        try:
            return str(json.loads(self.pointer.read_text())["file"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read(self, dim: int) -> tuple[VectorIndex | None, int]:
        """(index, covered label bound) of the current snapshot, or (None, 0) if absent or unreadable."""
        if not self.pointer.exists():
            return None, 0
        try:
            info = json.loads(self.pointer.read_text())
            index = self.loader(str(info.get("spec", self.default_spec)), self.data_dir / info["file"],
                                int(info.get("trained_on", 0)))
            if index.dim != dim:
                raise ValueError(f"snapshot has dim {index.dim}")
            return index, int(info["covers_labels_below"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("ignoring snapshot (%s); rebuilding the index from the store", exc)
            return None, 0

    def write(self, index: SegmentedIndex, sequence: int) -> str | None:
        """Saves the sealed part of `index` as the snapshot covering the labels it holds, points at it
        and deletes older files. Returns the file name, or None if a later snapshot was already written."""
        with self._lock:
            if sequence <= self._written:
                return None
            with index.sealed_part() as (sealed, covered):
                name = f"index-{covered}.faiss"
                try:
                    sealed.save(self.data_dir / name)  # atomic: temp file, fsync, rename
                except BaseException:
                    self._remove_temporaries()  # a full disk: the partial file would hold its space for ever
                    raise
                ntotal = sealed.ntotal
            write_text_durably(self.pointer, json.dumps({"file": name, "covers_labels_below": covered,
                                                         "spec": sealed.spec, "trained_on": sealed.trained_on}))
            self._written = sequence
            keep = self.current_file() or name
            for old in self.data_dir.glob("index-*.faiss"):
                if old.name != keep:
                    old.unlink(missing_ok=True)
        log.info("snapshot written: %s (%d vectors)", name, ntotal)
        return name
