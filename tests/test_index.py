"""Unit tests of the index layer: HNSW index, store and collection (no processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.v1 import types_pb2
from clipsearch_server.api.errors import FailedPrecondition, NotFound
from clipsearch_server.collection.collection import Collection
from clipsearch_server.index.vector_index import HnswIndex, HnswParams, normalize
from clipsearch_server.storage.sqlite import ImageRecord, SqliteStore as Store

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    return normalize(rng.standard_normal((n, DIM)).astype(np.float32))


def test_normalize_gives_unit_rows() -> None:
    v = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float32)
    out = normalize(v)
    assert np.allclose(out[0], [0.6, 0.8])
    assert np.allclose(out[1], [0.0, 0.0])
    assert np.allclose(np.linalg.norm(out[2]), 1.0)


def test_hnsw_scores_are_cosine_and_labels_are_ours() -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, 200)
    index = HnswIndex(DIM, HnswParams(m=16, ef_construction=64, ef_search=64))
    labels = np.arange(1000, 1200, dtype=np.int64)
    index.add(labels, vectors * 7.5)  # unnormalized input is normalized by the index
    scores, found = index.search(vectors[:5] * 0.1, 3)
    assert list(found[:, 0]) == list(labels[:5])
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    exact = vectors[:5] @ vectors.T
    best_other = np.sort(exact, axis=1)[:, -2]
    assert np.allclose(scores[:, 1], best_other, atol=1e-5)


def test_seed_flaw_l2_on_unnormalized_vectors_ranks_differently() -> None:
    """The seed's IndexFlatL2 on raw features prefers short vectors; cosine ranking does not."""
    query = np.array([1.0, 0.0], dtype=np.float32)
    aligned_long = np.array([10.0, 0.5], dtype=np.float32)  # cosine 0.9988
    off_short = np.array([0.6, 0.6], dtype=np.float32)  # cosine 0.707
    l2 = [np.linalg.norm(query - v) for v in (aligned_long, off_short)]
    assert l2[1] < l2[0]  # L2 would rank the worse match first
    index = HnswIndex(2)
    index.add(np.array([0, 1]), np.stack([aligned_long, off_short]))
    _, labels = index.search(query[None, :], 2)
    assert list(labels[0]) == [0, 1]


def test_collection_maps_ids_and_handles_k_larger_than_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 10)
    col = Collection(tmp_path, "m@1", DIM)
    col.upsert([ImageRecord(f"img-{i}", vectors[i], f"/x/{i}.jpg", {"i": str(i)}) for i in range(10)])
    hits = col.search(vectors[3], k=50)
    assert len(hits) == 10
    assert hits[0].id == "img-3" and hits[0].uri == "/x/3.jpg" and hits[0].metadata == {"i": "3"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert col.stats().count == 10


def test_collection_upsert_same_id_keeps_one_entry(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a, b = unit(rng, 2)
    col = Collection(tmp_path, "m@1", DIM)
    col.upsert([ImageRecord("x", a, "/a.jpg")])
    col.upsert([ImageRecord("x", a, "/a2.jpg", {"v": "2"})])  # same vector: metadata-only update
    assert col.stats().count == 1 and col.stats().stale_entries == 0
    col.upsert([ImageRecord("x", b, "/b.jpg")])  # new vector: old entry becomes stale
    stats = col.stats()
    assert stats.count == 1 and stats.stale_entries == 1
    hits = col.search(a, k=5)
    assert [h.id for h in hits] == ["x"]
    assert hits[0].uri == "/b.jpg"
    assert np.isclose(hits[0].score, float(a @ b), atol=1e-5)


def test_collection_survives_reopen_and_binds_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = unit(rng, 20)
    col = Collection(tmp_path, "m@1", DIM)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(20)])
    col.close()
    reopened = Collection(tmp_path, "m@1", DIM)
    assert reopened.stats().count == 20
    assert reopened.search(vectors[7], 1)[0].id == "7"
    reopened.close()
    with pytest.raises(FailedPrecondition, match="built with model m@1"):
        Collection(tmp_path, "other@2", DIM)


def test_search_by_id_excludes_the_query_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 5)
    col = Collection(tmp_path, "m@1", DIM)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(5)])
    hits = col.search(col.vector_of("2"), 10, exclude_id="2")
    assert len(hits) == 4 and "2" not in {h.id for h in hits}
    with pytest.raises(NotFound, match="no indexed image has id 'nope'"):
        col.vector_of("nope")


def test_check_model_refuses_other_model_or_dim(tmp_path: Path) -> None:
    col = Collection(tmp_path, "m@1", DIM)
    col.check_model("m@1", DIM)
    with pytest.raises(FailedPrecondition):
        col.check_model("m@2", DIM)
    with pytest.raises(FailedPrecondition):
        col.check_model("m@1", DIM + 1)


def test_empty_collection_returns_no_results(tmp_path: Path) -> None:
    col = Collection(tmp_path, "m@1", DIM)
    assert col.search(unit(np.random.default_rng(5), 1)[0], 10) == []


def test_delete_tombstones_and_never_returns_deleted(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    vectors = unit(rng, 50)
    col = Collection(tmp_path, "m@1", DIM)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(50)])
    assert col.delete(["3", "4", "nope"]) == ["3", "4"]
    assert col.stats().count == 48 and col.stats().stale_entries == 2
    for i in (3, 4):
        hits = col.search(vectors[i], 10)
        assert len(hits) == 10 and not {"3", "4"} & {h.id for h in hits}
    assert col.delete(["3"]) == []  # idempotent


def test_snapshot_then_replay_only_what_came_after(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = unit(rng, 30)
    col = Collection(tmp_path, "m@1", DIM)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(20)])
    assert col.snapshot() is True
    assert col.snapshot() is False  # nothing changed
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(20, 30)])  # after the snapshot
    col.upsert([ImageRecord("0", vectors[29])])  # replaces a snapshotted vector
    col.delete(["1"])
    col.close()  # no second snapshot: a crash here loses only the derived index, not data

    reopened = Collection(tmp_path, "m@1", DIM)
    assert reopened.stats().count == 29
    assert reopened.index.ntotal == 31  # 20 from the snapshot + 11 replayed, nothing rebuilt
    assert reopened.stats().stale_entries == 2  # old "0" and "1"
    assert {h.id for h in reopened.search(vectors[0], 5)}.isdisjoint({"1"})
    assert reopened.search(vectors[25], 1)[0].id == "25"
    assert reopened.search(vectors[29], 2)[0].score > 0.999


def test_corrupt_snapshot_falls_back_to_rebuild(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    vectors = unit(rng, 10)
    col = Collection(tmp_path, "m@1", DIM)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(10)])
    col.snapshot()
    col.close()
    for f in tmp_path.glob("index-*.faiss"):
        f.write_bytes(b"garbage")
    reopened = Collection(tmp_path, "m@1", DIM)
    assert reopened.stats().count == 10 and reopened.search(vectors[4], 1)[0].id == "4"


def test_compaction_drops_tombstones_and_keeps_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    vectors = unit(rng, 200)
    col = Collection(tmp_path, "m@1", DIM, compact_ratio=0.2, compact_min=10)
    col.upsert([ImageRecord(str(i), vectors[i]) for i in range(100)])
    col.delete([str(i) for i in range(0, 100, 10)])  # 10 tombstones: not yet 20 %
    assert col.stats().stale_entries == 10
    col.upsert([ImageRecord(str(i), vectors[100 + i]) for i in range(1, 30, 2)])  # 15 replaced
    col.wait_for_compaction(timeout=60)
    stats = col.stats()
    assert stats.stale_entries == 0 and col.index.ntotal == stats.count == 90
    deleted = {str(i) for i in range(0, 100, 10)}
    assert not deleted & {h.id for h in col.search(vectors[150], 20)}
    for i in range(1, 30, 2):  # replaced images are found by their new vector
        assert col.search(vectors[100 + i], 1)[0].id == str(i)
    assert (tmp_path / "snapshot.json").exists()  # compaction ends with a snapshot


def _store_state(store: Store) -> tuple[list, list, list]:
    conn = store._conn()
    return (conn.execute("SELECT id, label, uri, metadata, vector, fields FROM images ORDER BY id").fetchall(),
            conn.execute("SELECT label, key, type, value FROM fields ORDER BY label, key, value").fetchall(),
            conn.execute("SELECT id, mime_type, data FROM thumbnails ORDER BY id").fetchall())


def test_store_upsert_of_a_batch_equals_its_records_one_by_one(tmp_path: Path) -> None:
    """Store.upsert writes a batch with a few statements, not a few per record: the same rows, labels,
    stale labels and skips as writing its records one at a time, in order (an id repeated in the batch,
    an unchanged vector, a changed one, a deleted id, a thumbnail set and removed, typed fields)."""
    rng = np.random.default_rng(9)
    a, b, c, d = unit(rng, 4)
    first = [ImageRecord("kept", a, "/k.jpg", {"tag": "x"}, thumbnail=b"RIFF1", thumbnail_mime_type="image/webp"),
             ImageRecord("moved", b, "/m.jpg", {"tag": "y"}),
             ImageRecord("gone", c, "/g.jpg", submitted_at_ms=1_000)]
    batch = [ImageRecord("kept", a, "/k2.jpg", {"tag": "z"}),  # same vector: metadata only, thumbnail removed
             ImageRecord("moved", c, "/m2.jpg", {"tag": "y"}, fields={"n": types_pb2.Value(int_value=3)}),
             ImageRecord("new", d, "/n.jpg", {"tag": "w"}, thumbnail=b"RIFF2", thumbnail_mime_type="image/webp"),
             ImageRecord("new", a, "/n2.jpg", {"tag": "v"}),
             ImageRecord("new", a, "/n3.jpg", {"tag": "u"}, thumbnail=b"RIFF3", thumbnail_mime_type="image/webp"),
             ImageRecord("gone", d, "/g2.jpg", submitted_at_ms=1_500),  # submitted before its deletion
             ImageRecord("moved", c, "/m3.jpg", {"tag": "t"})]
    stores = []
    for name in ("batched", "one-by-one"):
        store = Store(tmp_path / f"{name}.db")
        store.upsert(first)
        store.delete(["gone"], now_ms=2_000)
        results = [store.upsert(batch)] if name == "batched" else [store.upsert([rec]) for rec in batch]
        added = [(label, v.tobytes()) for r in results for label, v in r.added]
        stores.append((added, [s for r in results for s in r.stale], [s for r in results for s in r.skipped],
                       _store_state(store)))
        store.close()
    assert stores[0] == stores[1]
    added, stale, skipped, (images, fields, thumbnails) = stores[0]
    assert [label for label, _ in added] == [3, 4, 5] and stale == [1, 4] and skipped == ["gone"]
    assert [(row[0], row[1], row[2]) for row in images] == [("kept", 0, "/k2.jpg"), ("moved", 3, "/m3.jpg"),
                                                            ("new", 5, "/n3.jpg")]
    assert sorted((label, key, value) for label, key, _, value in fields) == [(0, "tag", "z"), (3, "tag", "t"),
                                                                            (5, "tag", "u")]
    assert [(row[0], bytes(row[2])) for row in thumbnails] == [("new", b"RIFF3")]
