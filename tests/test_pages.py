"""Pages on the real collection (SQLite store + segmented FAISS HNSW) through the planner (query.py):
concatenated pages equal the exact top-N (ties by id, no repeats, no skips) through every plan, with
min_score, filters and the depth limit; images added or deleted between pages; near-duplicate collapse;
weighted terms."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from clipsearch.v1.types_pb2 import Filter, Range, Value
from clipsearch_core import pages
from clipsearch_core.errors import InvalidArgument
from clipsearch_server.collection.collection import Collection
from clipsearch_server.index.vector_index import HnswParams
from clipsearch_server.search.query import LabelCache, Page, Query, combine, run
from clipsearch_server.storage.records import ImageRecord

pytestmark = pytest.mark.timeout(120)

N, DIM = 600, 16
TWINS = 40  # images 0..39 have the same vector as image 40 + i: exact ties, ordered by id
FP = "fingerprint"


def vectors() -> np.ndarray:
    rng = np.random.default_rng(11)
    v = rng.standard_normal((N, DIM)).astype(np.float32)
    v[:TWINS] = v[TWINS:2 * TWINS]
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def record(i: int, v: np.ndarray) -> ImageRecord:
    return ImageRecord(f"i{i:04d}", v, fields={"n": Value(int_value=i)})


def make(path: Path, filter_exact_max: int) -> Collection:
    collection = Collection(path, "test-model", DIM, HnswParams(), filter_exact_max=filter_exact_max, seal_at=10_000)
    v = vectors()
    collection.upsert([record(i, v[i]) for i in range(N // 2)])
    collection.seal()  # half in the HNSW graph, half in the exact growing part: both parts serve pages
    collection.upsert([record(i, v[i]) for i in range(N // 2, N)])
    return collection


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Collection]]:
    """"exact": filters scan exactly; "graph": filters above 50 matches use the graph with a selector."""
    made = {"exact": make(tmp_path_factory.mktemp("exact"), 40_000),
            "graph": make(tmp_path_factory.mktemp("graph"), 50)}
    yield made
    for collection in made.values():
        collection.close()


def exact_order(collection: Collection, query: np.ndarray, keep=lambda i: True) -> list[tuple[float, str]]:
    """Every live image as (score, id) in (score desc, id asc) order, by brute force in float64."""
    labels, vecs = collection.vectors_of(collection.store.live_labels())
    images = collection.store.by_labels(labels.tolist())
    unit = query.astype(np.float64)
    unit /= np.linalg.norm(unit)
    scored = [(float(np.float32(vecs[row].astype(np.float64) @ unit)), images[int(label)].id)
              for row, label in enumerate(labels) if keep(int(images[int(label)].id[1:]))]
    return sorted(scored, key=lambda pair: (-pair[0], pair[1]))


def page_through(collection: Collection, query: Query, limit: int = 1000) -> list[Page]:
    out: list[Page] = []
    token = ""
    for _ in range(limit):
        q = Query(query.vector, query.k, query.flt, query.min_score,
                  pages.decode(token, FP, query.k) if token else None, FP, query.exclude, query.collapse)
        page, = run(collection, [q])
        out.append(page)
        token = page.next_page_token
        if not token:
            return out
    raise AssertionError("pages never ended")


def ids(found: list[Page]) -> list[str]:
    return [h.id for page in found for h in page.hits]


def query_vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


@pytest.mark.parametrize("seed", [1, 2])
def test_pages_of_7_concatenate_to_the_exact_order(collections: dict[str, Collection], seed: int) -> None:
    collection = collections["exact"]
    q = query_vector(seed)
    found = page_through(collection, Query(q, 7, fingerprint=FP))
    expected = exact_order(collection, q)
    assert len(found) == -(-N // 7)  # 86 pages: 85 full, the last one with N % 7 = 5
    assert [len(p.hits) for p in found[:-1]] == [7] * (len(found) - 1) and len(found[-1].hits) == N % 7
    assert found[-1].next_page_token == ""
    assert ids(found) == [image_id for _, image_id in expected]  # every image once, in order, ties by id
    assert [h.score for p in found for h in p.hits] == [score for score, _ in expected]
    twins = [image_id for image_id in ids(found) if int(image_id[1:]) % TWINS == 0 and int(image_id[1:]) < 2 * TWINS]
    assert twins.index("i0000") + 1 == twins.index("i0040")  # the same vector: adjacent, smaller id first


def test_last_full_page_has_no_token_when_nothing_follows(collections: dict[str, Collection]) -> None:
    found = page_through(collections["exact"], Query(query_vector(3), 100, fingerprint=FP))
    assert [len(p.hits) for p in found] == [100] * 6 and found[-1].next_page_token == ""


@pytest.mark.parametrize("plan", ["exact", "graph"])
def test_filtered_pages_concatenate_to_the_exact_filtered_order(collections: dict[str, Collection], plan: str) -> None:
    collection = collections[plan]
    flt = Filter(range=Range(field="n", gte=100, lt=400))  # 300 matches: over the graph plan's 50
    q = query_vector(4)
    found = page_through(collection, Query(q, 7, flt, fingerprint=FP))
    assert ids(found) == [i for _, i in exact_order(collection, q, lambda n: 100 <= n < 400)]
    assert len(ids(found)) == 300


def test_min_score_ends_the_pages(collections: dict[str, Collection]) -> None:
    collection = collections["exact"]
    q = query_vector(5)
    expected = [i for score, i in exact_order(collection, q) if score >= 0.3]
    assert 20 < len(expected) < N
    found = page_through(collection, Query(q, 7, min_score=0.3, fingerprint=FP))
    assert ids(found) == expected
    assert found[-1].next_page_token == "" and len(found) == -(-len(expected) // 7)


def test_depth_limit() -> None:
    token = pages.encode(pages.Cursor(0.5, "x", pages.MAX_DEPTH - 10, FP))
    assert pages.decode(token, FP, 10).returned == pages.MAX_DEPTH - 10
    with pytest.raises(InvalidArgument, match="depth limit"):
        pages.decode(token, FP, 11)
    with pytest.raises(InvalidArgument, match="another query"):
        pages.decode(token, "other", 1)


def test_a_page_reaching_the_depth_limit_has_no_token(collections: dict[str, Collection]) -> None:
    collection = collections["exact"]
    q = query_vector(6)
    first, = run(collection, [Query(q, 7, fingerprint=FP)])
    near_limit = pages.Cursor(first.hits[-1].score, first.hits[-1].id, pages.MAX_DEPTH - 7, FP)
    last, = run(collection, [Query(q, 7, cursor=near_limit, fingerprint=FP)])
    assert [h.id for h in last.hits] == [i for _, i in exact_order(collection, q)[7:14]]
    assert last.next_page_token == ""


def test_adds_and_deletes_between_pages(tmp_path: Path) -> None:
    """A deleted image disappears and nothing shifts; an added image shows only if it ranks after the cursor."""
    collection = make(tmp_path, 40_000)
    try:
        q = query_vector(7)
        order = [i for _, i in exact_order(collection, q)]
        first, = run(collection, [Query(q, 7, fingerprint=FP)])
        assert [h.id for h in first.hits] == order[:7]
        cursor = pages.decode(first.next_page_token, FP, 7)
        collection.delete([order[9]])  # on the coming page
        unit = q / np.linalg.norm(q)
        collection.upsert([ImageRecord("new-best", unit),  # ranks before the cursor: never shown
                           ImageRecord("new-mid", collection.vectors_of(
                               np.array([collection.store.label_of(order[10])]))[1][0])])  # ties order[10]
        second, = run(collection, [Query(q, 7, cursor=cursor, fingerprint=FP)])
        expected = order[7:9] + sorted([order[10], "new-mid"]) + order[11:14]
        assert [h.id for h in second.hits] == expected
        assert "new-best" not in [h.id for h in second.hits]
    finally:
        collection.close()


def test_collapse_keeps_the_best_of_near_duplicates(tmp_path: Path) -> None:
    collection = Collection(tmp_path, "test-model", DIM, HnswParams())
    try:
        rng = np.random.default_rng(3)
        base = rng.standard_normal((5, DIM)).astype(np.float32)
        records = []
        for g, v in enumerate(base):  # 5 groups of 4 near-identical vectors (cosine > 0.999)
            for j in range(4):
                records.append(ImageRecord(f"g{g}-{j}", v + 0.01 * rng.standard_normal(DIM).astype(np.float32)))
        collection.upsert(records)
        q = base[0] + 0.5 * base[1]
        plain, = run(collection, [Query(q, 8, fingerprint=FP)])
        assert [h.id.split("-")[0] for h in plain.hits[:8]] == ["g0"] * 4 + ["g1"] * 4
        page, = run(collection, [Query(q, 3, fingerprint=FP, collapse=0.99)])
        groups = [h.id.split("-")[0] for h in page.hits]
        assert len(set(groups)) == 3  # one result per group
        for hit, collapsed in zip(page.hits, page.collapsed):
            assert sorted(collapsed + [hit.id]) == [f"{hit.id.split('-')[0]}-{j}" for j in range(4)]
            assert all(hit.score >= s.score for s in plain.hits if s.id in collapsed)
    finally:
        collection.close()


def test_collapsed_pages_list_each_image_once(tmp_path: Path) -> None:
    """Paging with collapse: an image is a result or collapsed into one, once over all pages. A near
    duplicate of a page's last result that ranks below it is folded into that result, and the next
    page starts after it (it was listed as collapsed on one page and came back as a result on the next)."""
    collection = Collection(tmp_path, "test-model", DIM, HnswParams())
    try:
        rng = np.random.default_rng(5)
        base = rng.standard_normal((12, DIM)).astype(np.float32)
        collection.upsert([ImageRecord(f"g{g}-{j}", v + 0.01 * rng.standard_normal(DIM).astype(np.float32))
                           for g, v in enumerate(base) for j in range(3)])
        query = Query(base[0] + 0.3 * base[1] + 0.2 * base[2], 2, fingerprint=FP, collapse=0.99)
        listed = [i for page in page_through(collection, query)
                  for hit, collapsed in zip(page.hits, page.collapsed) for i in (hit.id, *collapsed)]
        assert sorted(listed) == sorted(f"g{g}-{j}" for g in range(12) for j in range(3)), listed
    finally:
        collection.close()


def test_combine_terms() -> None:
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    np.testing.assert_allclose(combine([a, b], [1.0, -1.0]), np.array([1, -1, 0, 0]) / np.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(combine([2 * a], [0.3]), a, atol=1e-6)  # terms are unit vectors first
    with pytest.raises(InvalidArgument, match="cancel out"):
        combine([a, a], [0.5, -0.5])


def test_label_cache_serves_a_filter_until_the_next_write(tmp_path: Path) -> None:
    collection = Collection(tmp_path, "test-model", DIM, HnswParams())
    try:
        v = vectors()
        collection.upsert([record(i, v[i]) for i in range(20)])
        cache = LabelCache()
        flt = Filter(range=Range(field="n", lt=10))
        first = cache.matching(collection, flt)
        assert len(first) == 10 and cache.matching(collection, flt) is first  # served from the cache
        collection.upsert([record(5, v[7])])  # replaced: a new label for n = 5
        fresh = cache.matching(collection, flt)
        assert fresh is not first and len(fresh) == 10 and set(first) != set(fresh)
        collection.delete(["i0003"])
        assert len(cache.matching(collection, flt)) == 9
        page, = run(collection, [Query(v[0], 20, flt, fingerprint=FP)], cache)
        assert sorted(h.id for h in page.hits) == [f"i{i:04d}" for i in range(10) if i != 3]
    finally:
        collection.close()


@pytest.mark.parametrize("plan", ["exact", "graph"])
def test_batched_first_round_equals_single_searches(collections: dict[str, Collection], plan: str) -> None:
    """search_many answers several query vectors in one index search, each row as its own search would."""
    collection = collections[plan]
    queries = np.stack([query_vector(seed) for seed in range(20, 26)])
    for matching in (None, collection.store.live_labels()[100:400]):
        rows = collection.search_many(queries, 9, matching)
        for q, row in zip(queries, rows):
            single = collection.search(q, 9) if matching is None else collection.search_among(q, 9, matching)
            assert [h.id for h in row] == [h.id for h in single] and len(row) == 9


def test_queries_sharing_a_filter_are_searched_together(collections: dict[str, Collection],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One batched index search per filter group (no widening needed here), answers equal to single runs."""
    collection = collections["graph"]
    flt = Filter(range=Range(field="n", gte=100, lt=400))
    queries = [Query(query_vector(30 + i), 5, flt if i < 3 else None, fingerprint=FP) for i in range(5)]
    calls: list[int] = []
    real = collection.search_many
    monkeypatch.setattr(collection, "search_many", lambda q, *a, **kw: calls.append(len(q)) or real(q, *a, **kw))
    batched = run(collection, queries)
    assert sorted(calls) == [2, 3]  # the filtered group of 3 and the unfiltered group of 2
    monkeypatch.undo()
    assert [[h.id for h in p.hits] for p in batched] == [[h.id for h in run(collection, [q])[0].hits] for q in queries]


@pytest.mark.parametrize("count", ["1e400", "-1e400", "Infinity"])
def test_a_forged_token_with_a_non_integer_count_is_invalid_argument(count: str) -> None:
    import base64
    body = '{"v":1,"s":0.5,"i":"x","n":%s,"q":"abc"}' % count
    token = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    with pytest.raises(InvalidArgument, match="not a token this service issued"):
        pages.decode(token, "abc", 10)
