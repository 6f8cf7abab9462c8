"""Unit tests of the index layer: HNSW index, store and collection (no processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch_server.collection import Collection
from clipsearch_server.errors import FailedPrecondition, NotFound
from clipsearch_server.index import HnswIndex, HnswParams, normalize
from clipsearch_server.store import ImageRecord

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
