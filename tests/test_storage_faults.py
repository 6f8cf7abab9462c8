"""Storage faults at the unit level: a failed SQLite write leaves nothing and says what happened; files
of saves that never finished do not stay; the exact-vector file owns its disk blocks. (The full disk
through a real server is tests/test_full_disk.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipsearch_core.errors import ResourceExhausted
from clipsearch_server.index.snapshots import Snapshots
from clipsearch_server.index.vectorfile import VectorFile
from clipsearch_server.storage.sqlite import ImageRecord, SqliteStore as Store, _immediate


def test_a_full_database_is_resource_exhausted_and_leaves_nothing(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself on SQLITE_FULL; the store's own ROLLBACK then failed with
    "cannot rollback - no transaction is active", which hid the cause and became INTERNAL. The page
    limit makes SQLite answer exactly as on a full disk (narrow unit test; the real disk: test_full_disk)."""
    store = Store(tmp_path / "images.db")
    unit = np.full(64, 1 / 8, dtype=np.float32)
    store.upsert([ImageRecord(id="a", vector=unit)])
    conn = store._conn()  # the connection of this thread, which the store writes with
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = [ImageRecord(id=f"b{i}", vector=unit, thumbnail=bytes(50_000), thumbnail_mime_type="image/webp")
           for i in range(20)]
    with pytest.raises(ResourceExhausted) as info:
        store.upsert(big)
    assert str(info.value).startswith("the server's disk is full (database or disk is full)")
    assert info.value.retry_after_s == 5.0
    assert not conn.in_transaction and store.count() == 1 and store.next_label() == 1  # nothing half-written
    conn.execute("PRAGMA max_page_count = 1073741823")  # space again: the same write goes through
    assert len(store.upsert(big).added) == 20 and store.count() == 21


def test_other_sqlite_errors_still_raise_as_they_are(tmp_path: Path) -> None:
    """Only storage failures are retryable; a bug (here: a missing table) stays an error of its own."""
    store = Store(tmp_path / "images.db")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        with _immediate(store._conn()) as conn:
            conn.execute("SELECT * FROM nothing_here")
    assert not store._conn().in_transaction


def test_unfinished_snapshot_files_are_deleted(tmp_path: Path) -> None:
    """kill -9 during a snapshot left index-*.faiss.tmp (as large as the index) for ever, through restarts."""
    (tmp_path / "index-100.faiss.tmp").write_bytes(b"\0" * 1000)
    (tmp_path / "snapshot.json.tmp").write_text("{")
    (tmp_path / "index-50.faiss").write_bytes(b"kept")
    Snapshots(tmp_path, lambda spec, path, trained: None, "HNSW32,Flat")  # type: ignore[arg-type,return-value]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index-50.faiss"]


def test_the_vector_file_allocates_the_blocks_it_grows_by(tmp_path: Path) -> None:
    """A sparse file (ftruncate) on a full disk is written through its map: SIGBUS kills the server. The
    blocks are allocated when the file grows instead, so a full disk is an OSError there."""
    vectors = VectorFile(tmp_path / "vectors.f32", 64)
    vectors.reserve(5000)
    info = (tmp_path / "vectors.f32").stat()
    assert info.st_size == 5000 * 64 * 4 and info.st_blocks * 512 >= info.st_size
    vectors.write(np.array([4999]), np.ones((1, 64), dtype=np.float32))
    assert vectors.read(np.array([4999]))[0, 0] == 1.0 and vectors.rows == 5000
