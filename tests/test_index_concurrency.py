"""The index and the collection under concurrency and at the edges: writes not starved by searches,
selectors alive for every search, serialized snapshots, bounded widening, deletes that win."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch_server.collection.collection import Collection
from clipsearch_server.index.vector_index import HnswIndex, HnswParams, VectorIndex, make_index, normalize
from clipsearch_server.storage.sqlite import ImageRecord, SqliteStore as Store

pytestmark = pytest.mark.timeout(120)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalize(rng.standard_normal((n, dim)).astype(np.float32))


def test_make_index_builds_kinds_from_a_spec() -> None:
    index = make_index("HNSW8,Flat", 4, HnswParams(m=32, ef_construction=40, ef_search=16))
    assert isinstance(index, VectorIndex) and isinstance(index, HnswIndex)
    assert index.params.m == 8 and index.is_trained and index.description.startswith("HNSW8,Flat")
    index.add(np.array([5, 6]), np.eye(4, dtype=np.float32)[:2])
    assert index.ntotal == 2 and index.memory_bytes() > 0
    with pytest.raises(ValueError, match="unknown index spec 'IVF9,PQ8'"):
        make_index("IVF9,PQ8", 4)


def test_one_add_completes_while_four_threads_search() -> None:
    """The old reader-preferring lock let a stream of searches starve an add for seconds."""
    rng = np.random.default_rng(0)
    dim = 64
    index = HnswIndex(dim, HnswParams(m=16, ef_construction=40, ef_search=64))
    index.add(np.arange(20_000), unit(rng, 20_000, dim))
    queries = unit(rng, 8, dim)
    stop = threading.Event()
    searches = [0] * 4

    def search(n: int) -> None:
        while not stop.is_set():
            index.search(queries, 200)
            searches[n] += 1

    threads = [threading.Thread(target=search, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        index.add(np.array([10**6]), unit(rng, 1, dim))
        waited = time.monotonic() - started
        before = sum(searches)
        time.sleep(0.3)
        assert sum(searches) > before  # searches go on after the add
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert waited < 1.0, f"add waited {waited:.2f}s behind searches"
    assert index.search(unit(rng, 1, dim), 1)[1].shape == (1, 1)


def test_searches_racing_removes_never_return_tombstones() -> None:
    """Each search holds the selector it started with; removes swap in a new one under the write lock."""
    rng = np.random.default_rng(1)
    dim = 16
    vectors = unit(rng, 3000, dim)
    index = HnswIndex(dim, HnswParams(m=8, ef_construction=40, ef_search=32))
    index.add(np.arange(3000), vectors)
    removed: set[int] = set()
    errors: list[str] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            snapshot = set(removed)  # removed before this search started
            _, labels = index.search(vectors[:4], 50)
            bad = snapshot & set(labels.ravel().tolist())
            if bad:
                errors.append(f"tombstoned labels returned: {sorted(bad)[:5]}")

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for start in range(0, 1500, 10):
            batch = list(range(start, start + 10))
            index.remove(batch)
            removed.update(batch)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[0]
    assert index.tombstones == 1500


def test_concurrent_snapshots_keep_the_current_file_and_restart_loads_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    dim = 16
    vectors = unit(rng, 400, dim)
    col = Collection(tmp_path, "m@1", dim, HnswParams(m=8, ef_construction=40, ef_search=32))
    errors: list[BaseException] = []
    listing = Path.glob

    def slow_glob(self: Path, pattern: str):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "slow":
            time.sleep(0.3)  # a slow directory listing: a newer snapshot completes meanwhile
        return listing(self, pattern)

    monkeypatch.setattr(Path, "glob", slow_glob)

    def snapshots(n: int) -> None:
        try:
            for i in range(20):
                col.upsert([ImageRecord(f"{n}-{i}", vectors[n * 20 + i])])
                col.snapshot(force=True)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=snapshots, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    slow = threading.Thread(target=lambda: (col.upsert([ImageRecord("s1", vectors[300])]), col.snapshot()), name="slow")
    slow.start()
    time.sleep(0.1)  # the slow call has written its file and is now listing old ones
    col.upsert([ImageRecord("s2", vectors[301])])
    col.snapshot()  # newer: its file must survive the slow call's cleanup
    slow.join(10)
    current = json.loads((tmp_path / "snapshot.json").read_text())["file"]
    assert (tmp_path / current).exists(), "the pointer names a deleted file"
    assert [p.name for p in tmp_path.glob("index-*.faiss")] == [current]
    col.close()
    caplog.clear()
    reopened = Collection(tmp_path, "m@1", dim, HnswParams(m=8, ef_construction=40, ef_search=32))
    assert "ignoring snapshot" not in caplog.text, "restart rebuilt the index instead of loading the snapshot"
    assert getattr(reopened, "loaded_from_snapshot", True)
    assert reopened.stats().count == 122 and reopened.index.ntotal == 122
    reopened.close()


def test_many_tombstones_and_large_k_give_exact_results(tmp_path: Path) -> None:
    """Widening used to double up to the whole index and pass SQLite's parameter limit (32766)."""
    rng = np.random.default_rng(3)
    dim, n = 8, 40_000
    vectors = unit(rng, n, dim)
    col = Collection(tmp_path, "m@1", dim, HnswParams(m=8, ef_construction=20, ef_search=16),
                     compact_min=10**9)
    for start in range(0, n, 4000):
        col.upsert([ImageRecord(str(i), vectors[i]) for i in range(start, start + 4000)])
    col.seal()  # all in the graph, whatever the background seals managed meanwhile (waits for a running one)
    assert col.index.sealed.ntotal == n and col.index.growing.ntotal == 0
    keep = set(range(0, n, 50))  # 800 survive, 39,200 tombstones
    doomed = [str(i) for i in range(n) if i not in keep]
    for start in range(0, len(doomed), 1000):
        col.delete(doomed[start:start + 1000])
    query = vectors[7]
    searches = []
    index_search = col.index.search
    col.index.search = lambda q, k, *a: searches.append(k) or index_search(q, k, *a)  # type: ignore[method-assign]
    hits = col.search(query, 1000)
    assert len(searches) <= 3, f"widening took {len(searches)} index searches (fetch {searches})"
    live = np.array(sorted(keep))
    exact = live[np.argsort(-(vectors[live] @ query), kind="stable")]
    assert len(hits) == len(keep)
    assert {h.id for h in hits} == {str(i) for i in keep}
    assert [h.id for h in hits[:20]] == [str(i) for i in exact[:20]]
    few = col.search(query, 100)
    assert [h.id for h in few] == [str(i) for i in exact[:100]]
    col.close()


def test_store_drops_upserts_submitted_before_a_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    v = np.ones(4, dtype=np.float32) / 2
    store.upsert([ImageRecord("a", v, submitted_at_ms=1000)])
    assert store.delete(["a", "never-indexed"], now_ms=2000) == [("a", 0)]
    result = store.upsert([ImageRecord("a", v, submitted_at_ms=1500),
                           ImageRecord("never-indexed", v, submitted_at_ms=1999)])
    assert result.skipped == ["a", "never-indexed"] and result.added == [] and store.count() == 0
    assert store.upsert([ImageRecord("a", v, submitted_at_ms=2001)]).added  # submitted after the delete
    assert store.upsert([ImageRecord("never-indexed", v)]).added  # 0 = unknown: written as before
    assert store.count() == 2
    store.close()


def test_store_lookup_of_more_labels_than_sqlite_parameters(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.upsert([ImageRecord(str(i), np.ones(2, dtype=np.float32)) for i in range(10)])
    found = store.by_labels(list(range(300_000)))  # one IN (...) would pass SQLite's limit (32,766 or 250,000)
    assert sorted(found) == list(range(10)) and found[3].id == "3"
    store.close()


def test_writes_go_on_while_a_snapshot_goes_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot used to hold the write lock while the index was written and fsynced."""
    import clipsearch_server.index.files as files
    import clipsearch_server.index.snapshots as snapshots_module
    import clipsearch_server.index.vector_index as index_module

    durable = files.replace_durably

    def slow_disk(tmp: Path, path: Path) -> None:
        if path.suffix == ".faiss":
            time.sleep(1.5)  # a large index on a slow disk
        durable(tmp, path)

    for module in (index_module, snapshots_module):  # the index saves; older code imported it here too
        monkeypatch.setattr(module, "replace_durably", slow_disk, raising=False)
    rng = np.random.default_rng(5)
    vectors = unit(rng, 100, 16)
    col = Collection(tmp_path, "m@1", 16, HnswParams(m=8, ef_construction=40, ef_search=32))
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(50)])
    snap = threading.Thread(target=col.snapshot)
    snap.start()
    time.sleep(0.3)
    started = time.monotonic()
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(50, 60)])
    waited = time.monotonic() - started
    snap.join(10)
    assert waited < 0.5, f"an upsert waited {waited:.2f}s for the snapshot"
    assert json.loads((tmp_path / "snapshot.json").read_text())["covers_labels_below"] == 50
    col.close()
    reopened = Collection(tmp_path, "m@1", 16, HnswParams(m=8, ef_construction=40, ef_search=32))
    assert reopened.loaded_from_snapshot and reopened.stats().count == 60
    reopened.close()
