"""The segmented index: writes go on while a large snapshot is written, searches see each label once
while a seal moves vectors into the graph, and results are the same before/after sealing and after a
restart (snapshot + replay of newer rows into the growing part)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipsearch_server.collection.collection import Collection
from clipsearch_server.index.segments import SegmentedIndex
from clipsearch_server.index.vector_index import HnswIndex, HnswParams, normalize
from clipsearch_server.storage.records import ImageRecord

pytestmark = pytest.mark.timeout(120)

PARAMS = HnswParams(m=16, ef_construction=100, ef_search=256)  # near-exact on a few thousand vectors


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalize(rng.standard_normal((n, dim)).astype(np.float32))


def test_upserts_go_on_while_a_large_snapshot_is_copied_and_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large index is simulated by slow faiss calls: copying it in memory takes 1 s, serializing it
    1.5 s. The old snapshot copied it under the write lock, so an upsert waited about 1 s."""
    clone, write = faiss.clone_index, faiss.write_index

    def slow_clone(index):  # type: ignore[no-untyped-def]
        time.sleep(1.0)
        return clone(index)

    def slow_write(index, path):  # type: ignore[no-untyped-def]
        time.sleep(1.5)
        return write(index, path)

    monkeypatch.setattr(faiss, "clone_index", slow_clone)
    monkeypatch.setattr(faiss, "write_index", slow_write)
    rng = np.random.default_rng(5)
    vectors = unit(rng, 2000, 16)
    col = Collection(tmp_path, "m@1", 16, PARAMS)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(1500)])
    getattr(col, "seal", lambda: None)()  # into the graph now: the snapshot below only serializes
    snap = threading.Thread(target=col.snapshot)
    snap.start()
    time.sleep(0.4)  # now serializing
    waits, search_waits = [], []
    for n in range(5):
        started = time.monotonic()
        col.upsert([ImageRecord(str(i), vectors[i]) for i in range(1500 + 10 * n, 1510 + 10 * n)])
        waits.append(time.monotonic() - started)
        started = time.monotonic()
        hits = col.search(vectors[1500 + 10 * n], 5)
        search_waits.append(time.monotonic() - started)
        assert hits[0].id == str(1500 + 10 * n)  # the new vector is searchable at once
    assert snap.is_alive(), "the snapshot finished before the upserts: the test measured nothing"
    snap.join(10)
    assert max(waits) < 0.2, f"upserts waited {max(waits):.2f}s for the snapshot"
    assert max(search_waits) < 0.2, f"searches waited {max(search_waits):.2f}s for the snapshot"
    pointer = json.loads((tmp_path / "snapshot.json").read_text())
    assert pointer["covers_labels_below"] == 1500  # the upserts made meanwhile are replayed on start
    col.close()
    reopened = Collection(tmp_path, "m@1", 16, PARAMS)
    assert reopened.loaded_from_snapshot and reopened.stats().count == 1550
    assert reopened.index.sealed.ntotal == 1500 and reopened.index.growing.ntotal == 50
    reopened.close()


def test_results_are_the_same_before_and_after_sealing_and_after_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    dim, n = 16, 3000
    vectors = unit(rng, n, dim)
    queries = unit(rng, 8, dim)
    col = Collection(tmp_path, "m@1", dim, PARAMS, seal_at=10**9)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(1000)])
    col.snapshot()  # 0..999 sealed
    for start in range(1000, n, 500):  # growing: 1000..2999
        col.upsert([ImageRecord(str(i), vectors[i]) for i in range(start, start + 500)])
    deleted = [str(i) for i in range(0, n, 7)]  # tombstones in both parts
    col.delete(deleted)
    col.upsert([ImageRecord("5", vectors[6])])  # a replaced image: old label tombstoned, new one growing
    assert col.index.sealed.ntotal == 1000 and col.index.growing.ntotal > 1000

    live = {str(i): vectors[i] for i in range(n) if str(i) not in set(deleted)}
    live["5"] = vectors[6]
    ids = sorted(live)
    matrix = np.stack([live[i] for i in ids])
    among_ids = [i for i in ids if int(i) % 3 == 0]  # a filter's matches, in both parts
    among = np.array(sorted(col.store.label_of(i) for i in among_ids), dtype=np.int64)

    def results(c: Collection) -> list[list[tuple[str, float]]]:
        out = []
        for q in queries:
            out.append([(h.id, round(h.score, 4)) for h in c.search(q, 10)])
            out.append([(h.id, round(h.score, 4)) for h in c.search_among(q, 10, among)])
        return out

    def exact() -> list[list[str]]:
        out = []
        for q in queries:
            scores = matrix @ q
            out.append([ids[j] for j in np.argsort(-scores, kind="stable")[:10]])
            sub = [ids.index(i) for i in among_ids]
            out.append([ids[sub[j]] for j in np.argsort(-scores[sub], kind="stable")[:10]])
        return out

    growing = results(col)
    assert [[i for i, _ in r] for r in growing] == exact()
    assert col.seal() > 1000 and col.index.growing.ntotal == 0
    assert results(col) == growing
    col.snapshot()
    col.upsert([ImageRecord(f"new{i}", vectors[i]) for i in range(3)])  # after the snapshot: replayed
    after_snapshot = results(col)
    col.close()
    reopened = Collection(tmp_path, "m@1", dim, PARAMS, seal_at=10**9)
    assert reopened.loaded_from_snapshot and reopened.index.growing.ntotal == 3
    assert results(reopened) == after_snapshot
    assert reopened.stats().count == len(live) + 3
    reopened.close()


def test_searches_during_a_seal_see_each_label_once_and_never_come_back_short() -> None:
    rng = np.random.default_rng(7)
    dim = 16
    vectors = unit(rng, 4000, dim)
    index = SegmentedIndex(HnswIndex(dim, PARAMS), 0)
    index.add(np.arange(4000), vectors)
    index.remove(range(0, 4000, 5))
    queries = unit(rng, 4, dim)
    expected = index.search(queries, 20)[1]
    errors: list[str] = []
    done = threading.Event()

    def search() -> None:
        while not done.is_set():
            labels = index.search(queries, 20)[1]
            for row, want in zip(labels, expected):
                if len(set(row.tolist())) != 20 or -1 in row or (row % 5 == 0).any():
                    errors.append(f"bad result during the seal: {row.tolist()}")
                if set(row.tolist()) != set(want.tolist()):
                    errors.append(f"different result during the seal: {row.tolist()} vs {want.tolist()}")

    thread = threading.Thread(target=search)
    thread.start()
    try:
        assert index.seal(chunk=200) == 4000 - 800  # removed rows left the growing part at once
    finally:
        done.set()
        thread.join(10)
    assert not errors, errors[0]
    assert index.sealed_below == 4000 and index.growing.ntotal == 0
    assert (index.search(queries, 20)[1] == expected).all()


def test_a_full_growing_part_is_sealed_in_the_background(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    vectors = unit(rng, 300, 16)
    col = Collection(tmp_path, "m@1", 16, PARAMS, seal_at=100)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(50)])
    assert col.index.growing.ntotal == 50 and col.index.sealed.ntotal == 0  # below seal_at: nothing moves
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(50, 150)])
    deadline = time.monotonic() + 10
    while col.index.sealed.ntotal < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert col.index.sealed.ntotal == 150 and col.index.sealed_below == 150
    assert col.index.growing.ntotal == 0
    assert [h.id for h in col.search(vectors[120], 1)] == ["120"]
    col.close()


def test_deletes_and_replacements_do_not_wait_for_a_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tombstoning took the graph's write lock, which waits for the snapshot's save (read lock); being
    writer-preferring, every search and write queued behind it too."""
    write = faiss.write_index

    def slow_write(index, path):  # type: ignore[no-untyped-def]
        time.sleep(1.5)
        return write(index, path)

    monkeypatch.setattr(faiss, "write_index", slow_write)
    v = normalize(np.random.default_rng(5).standard_normal((2000, 16)).astype(np.float32))
    col = Collection(tmp_path, "m@1", 16, HnswParams(m=16, ef_construction=40, ef_search=32))
    col.upsert([ImageRecord(str(i), v[i]) for i in range(1500)])
    col.seal()
    snap = threading.Thread(target=col.snapshot)
    snap.start()
    time.sleep(0.4)  # now serializing
    waits = []
    for what in (lambda: col.delete(["3"]), lambda: col.upsert([ImageRecord("4", v[1700])]),
                 lambda: col.search(v[7], 5)):
        started = time.monotonic()
        what()
        waits.append(time.monotonic() - started)
    assert snap.is_alive(), "the snapshot finished first: nothing was measured"
    snap.join(10)
    assert max(waits) < 0.2, f"waited {[round(w, 2) for w in waits]}s for the snapshot"
    assert {h.id for h in col.search(v[3], 5)}.isdisjoint({"3"})
    col.close()
