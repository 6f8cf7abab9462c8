"""Filtered search on the real collection (SQLite store + FAISS HNSW): exact filter semantics, and
"never short": min(k, matches) results with recall@k >= 0.95 against an exact filtered search, at every
selectivity, through both plans (exact scan and graph with a selector), with tombstones."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from clipsearch.v1.types_pb2 import Filter, FilterList, Match, Range, StringList, TimeRange, Value
from clipsearch_server.api.errors import InvalidArgument
from clipsearch_server.collection.collection import Collection
from clipsearch_server.index.vector_index import HnswParams
from clipsearch_server.search import filters
from clipsearch_server.storage.records import ImageRecord

pytestmark = pytest.mark.timeout(120)

N, DIM, K = 3000, 32, 10
DAY_MS = 86_400_000


def fields_of(i: int) -> dict[str, Value]:
    out = {
        "n": Value(int_value=i),
        "price": Value(float_value=i / 10),
        "even": Value(bool_value=i % 2 == 0),
        "taken": Value(time_ms=i * DAY_MS),
        "tags": Value(string_list=StringList(values=[f"m{i % 7}", f"q{i % 11}"])),
    }
    if i % 3 == 0:
        out["odd3"] = Value(string_value="yes")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Collection, np.ndarray]:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection = Collection(tmp_path_factory.mktemp("filters"), "test-model", DIM, HnswParams())
    collection.upsert([ImageRecord(f"i{i}", vectors[i], metadata={"shape": ("circle", "square", "star")[i % 3]},
                                   fields=fields_of(i)) for i in range(N)])
    yield collection, vectors
    collection.close()


def lt(n: int) -> Filter:
    return Filter(range=Range(field="n", lt=n))


def ids_of(collection: Collection, flt: Filter) -> set[int]:
    labels = filters.matching_labels(collection.store, filters.check(flt))
    return {int(image.id[1:]) for image in collection.store.by_labels(labels.tolist()).values()}


CASES: list[tuple[Filter, Callable[[int], bool]]] = [
    (Filter(match=Match(field="shape", any_of=StringList(values=["circle"]))), lambda i: i % 3 == 0),
    (Filter(match=Match(field="shape", any_of=StringList(values=["circle", "star"]))), lambda i: i % 3 != 1),
    (Filter(match=Match(field="tags", any_of=StringList(values=["m1", "q2"]))), lambda i: i % 7 == 1 or i % 11 == 2),
    (Filter(match=Match(field="n", integer=42)), lambda i: i == 42),
    (Filter(match=Match(field="even", boolean=False)), lambda i: i % 2 == 1),
    (Filter(range=Range(field="price", gte=10, lt=20.5)), lambda i: 100 <= i <= 204),
    (Filter(range=Range(field="n", gt=2990)), lambda i: i > 2990),
    (Filter(time_range=TimeRange(field="taken", gte_ms=5 * DAY_MS, lte_ms=9 * DAY_MS)), lambda i: 5 <= i <= 9),
    (Filter(exists="odd3"), lambda i: i % 3 == 0),
    (Filter(all=FilterList(filters=[lt(100), Filter(match=Match(field="even", boolean=True))])),
     lambda i: i < 100 and i % 2 == 0),
    (Filter(any=FilterList(filters=[lt(5), Filter(range=Range(field="n", gte=2995))])), lambda i: i < 5 or i >= 2995),
    (Filter(**{"not": Filter(exists="odd3")}), lambda i: i % 3 != 0),
    (Filter(**{"not": Filter(range=Range(field="shape", gte=0))}), lambda i: True),  # a string is not a number
    (Filter(match=Match(field="nope", any_of=StringList(values=["x"]))), lambda i: False),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_filter_matches_exactly_the_images_it_describes(data: tuple[Collection, np.ndarray], case: int) -> None:
    collection, _ = data
    flt, predicate = CASES[case]
    assert ids_of(collection, flt) == {i for i in range(N) if predicate(i)}


def exact_top(vectors: np.ndarray, query: np.ndarray, allowed: list[int], k: int) -> set[int]:
    scores = vectors[allowed] @ query
    return {allowed[j] for j in np.argsort(-scores)[:k]}


@pytest.mark.parametrize("exact_max", [40_000, 0], ids=["exact-plan", "graph-plan"])
def test_filtered_search_never_short_with_recall_at_every_selectivity(
        data: tuple[Collection, np.ndarray], exact_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    collection, vectors = data
    monkeypatch.setattr(collection, "filter_exact_max", exact_max)
    fallbacks: list[int] = []
    original = collection._exact_among
    monkeypatch.setattr(collection, "_exact_among", lambda *a, **kw: fallbacks.append(1) or original(*a, **kw))
    queries = np.random.default_rng(11).standard_normal((20, DIM)).astype(np.float32)
    for matches in (1, 3, 9, 30, 100, 300, 1000, 3000):  # 1 in 3000 up to all
        fallbacks.clear()
        found = 0
        for query in queries:
            hits = collection.search_among(query, K, filters.matching_labels(collection.store, lt(matches)))
            got = [int(h.id[1:]) for h in hits]
            assert len(got) == min(K, matches), (matches, len(got))
            assert all(i < matches for i in got) and len(set(got)) == len(got)
            found += len(set(got) & exact_top(vectors, query / np.linalg.norm(query), list(range(matches)), K))
        recall = found / (len(queries) * min(K, matches))
        assert recall >= 0.95, f"{matches} matches: recall {recall:.3f}"
        if exact_max == 0 and matches >= 300:  # the graph answers alone at 10 % and more
            assert not fallbacks, f"{matches} matches: {len(fallbacks)} exact fallbacks"


def test_tombstones_and_filters_combine(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, DIM)).astype(np.float32)
    collection = Collection(tmp_path, "test-model", DIM, HnswParams(), filter_exact_max=0)
    try:
        collection.upsert([ImageRecord(f"i{i}", vectors[i], fields=fields_of(i)) for i in range(500)])
        collection.delete([f"i{i}" for i in range(0, 20)])  # 20 of the 40 with n < 40 deleted
        collection.upsert([ImageRecord(f"i{i}", -vectors[i], fields={"n": Value(int_value=1000 + i)})
                           for i in range(20, 30)])  # 10 replaced: new vector, no longer n < 40
        for exact_max in (0, 40_000):
            collection.filter_exact_max = exact_max
            hits = collection.search_among(vectors[35], 50, filters.matching_labels(collection.store, lt(40)))
            assert sorted(int(h.id[1:]) for h in hits) == list(range(30, 40))
            assert hits[0].id == "i35" and hits[0].fields["n"].int_value == 35
            hits = collection.search_among(vectors[35], 50, filters.matching_labels(collection.store, lt(40)),
                                           exclude_id="i35")
            assert sorted(int(h.id[1:]) for h in hits) == [30, 31, 32, 33, 34, 36, 37, 38, 39]
    finally:
        collection.close()


def nested(depth: int) -> Filter:
    flt = Filter(exists="n")
    for _ in range(depth - 1):
        flt = Filter(**{"not": flt})
    return flt


@pytest.mark.parametrize("flt,message", [
    (Filter(), "filter is empty"),
    (nested(9), "nests deeper than 8 levels"),
    (Filter(all=FilterList(filters=[Filter(exists="n")] * 256)), "more than 256 conditions"),
    (Filter(all=FilterList()), "filter.all holds no filters"),
    (Filter(range=Range(field="n")), "filter.range sets no bound"),
    (Filter(range=Range(field="n", lt=float("inf"))), "filter.range.lt must be finite"),
    (Filter(match=Match(field="n")), "filter.match has no value"),
    (Filter(match=Match(field="", boolean=True)), "filter.match.field must name a field"),
    (Filter(match=Match(field="t", any_of=StringList(values=["x"] * 1025))), "1025 values; give 1 to 1024"),
    (Filter(any=FilterList(filters=[Filter(exists="n"), Filter()])), "filter.any[1] is empty"),
])
def test_filter_limits(flt: Filter, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        filters.check(flt)
    assert message in str(err.value), str(err.value)
    assert filters.check(nested(8)) is not None


def test_store_from_before_typed_fields_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "images.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE images (id TEXT PRIMARY KEY, label INTEGER NOT NULL UNIQUE, uri TEXT NOT NULL,
                             metadata TEXT NOT NULL, vector BLOB NOT NULL, updated_ms INTEGER NOT NULL);
        CREATE TABLE deletions (id TEXT PRIMARY KEY, deleted_at_ms INTEGER NOT NULL);
    """)
    for i in range(4):
        conn.execute("INSERT INTO images VALUES (?, ?, '', ?, ?, 0)",
                     (f"i{i}", i, '{"shape":"%s"}' % ("circle" if i % 2 else "square"), np.ones(DIM, "<f4").tobytes()))
    conn.execute("INSERT INTO meta VALUES ('next_label', '4')")
    conn.commit()
    conn.close()
    from clipsearch_server.storage.sqlite import SqliteStore as Store

    store = Store(path)
    try:
        circles = Filter(match=Match(field="shape", any_of=StringList(values=["circle"])))
        assert filters.matching_labels(store, circles).tolist() == [1, 3]
        assert store.by_labels([1])[1].fields["shape"].string_value == "circle"
    finally:
        store.close()
