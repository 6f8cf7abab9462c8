"""Filtered search benchmark: queries/s and recall@10 of filtered searches at 50/10/1/0.1/0.001 %
(and 20 %) selectivity against unfiltered search, on the product's collection (SQLite store + field index +
segmented HNSW, planner in collection.py and query.py), one query at a time on one thread.

    nice -n 10 python bench/bench_filters.py --n 1000000 [--queries 200] [--cache /tmp/clipsearch-bench-filters]

Vectors: the clustered 512-d set of bench_index.py. Each image has an integer field `bucket`, uniform in
[0, 100000); the filter `bucket < p * 1000` matches p % of the images. Per selectivity it reports:
- the plan (exact scan when the matches are at most --filter-exact-max, else HNSW with a selector);
- eval ms: evaluating the filter to its label set (filters.matching_labels: SQL over the field index);
- search q/s: the planned search given the label set (Collection.search_among), and its ratio to
  unfiltered Collection.search, by mean (x_unfiltered) and by median latency (x_unfiltered_p50, robust
  to stalls on a shared machine); p50/p99 latency;
- end-to-end q/s: query.run (filter evaluation + planned search + re-scoring for page order), without
  and with the server's filter cache (query.LabelCache: queries sharing a filter evaluate it once per
  write generation; no writes happen during the run);
- recall@10 against an exact filtered search, and whether every query got min(10, matches) results.
The built data directory (store + HNSW snapshot) is cached under --cache and reused by later runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread per query, BLAS too
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_index import clustered, recall  # noqa: E402
from bench.common import percentiles, save, table  # noqa: E402
from clipsearch.v1.types_pb2 import Filter, Range, Value  # noqa: E402
from clipsearch_server.collection.collection import Collection  # noqa: E402
from clipsearch_server.index.segments import SegmentedIndex  # noqa: E402
from clipsearch_server.index.snapshots import Snapshots  # noqa: E402
from clipsearch_server.index.vector_index import HnswIndex, HnswParams, set_threads  # noqa: E402
from clipsearch_server.search import filters, query  # noqa: E402
from clipsearch_server.storage.sqlite import (
    ImageRecord,  # noqa: E402
    SqliteStore as Store,
)

DIM, K, BUCKETS = 512, 10, 100_000
SELECTIVITIES = (50.0, 20.0, 10.0, 1.0, 0.1, 0.001)  # percent


def build(data_dir: Path, vectors: np.ndarray, buckets: np.ndarray, params: HnswParams) -> None:
    """The store rows (with the bucket field) and an HNSW snapshot covering them all."""
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    store = Store(data_dir / "images.sqlite3")
    store.set_meta("model", "bench")
    store.set_meta("dim", str(DIM))
    for start in range(0, len(vectors), 20_000):
        store.upsert([ImageRecord(f"b{i}", vectors[i], fields={"bucket": Value(int_value=int(buckets[i]))})
                      for i in range(start, min(start + 20_000, len(vectors)))])
    store.close()
    print(f"store: {len(vectors)} rows in {time.monotonic() - started:.0f}s", flush=True)
    started = time.monotonic()
    set_threads(os.cpu_count() or 1)
    graph = HnswIndex(DIM, params)
    for start in range(0, len(vectors), 50_000):
        stop = min(start + 50_000, len(vectors))
        graph.add(np.arange(start, stop, dtype=np.int64), vectors[start:stop])
    Snapshots(data_dir, f"HNSW{params.m},Flat", params).write(SegmentedIndex(graph, len(vectors)), 1)
    print(f"HNSW: built in {time.monotonic() - started:.0f}s", flush=True)


def exact_top(vectors: np.ndarray, labels: np.ndarray | None, queries: np.ndarray) -> np.ndarray:
    """Exact top-K labels per query among `labels` (None: all)."""
    pool = np.arange(len(vectors)) if labels is None else labels
    out = np.empty((len(queries), min(K, len(pool))), dtype=np.int64)
    best = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_labels = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(pool), 100_000):
        chunk = pool[start:start + 100_000]
        scores = queries @ vectors[chunk].T
        best = np.concatenate([best, scores], axis=1)
        best_labels = np.concatenate([best_labels, np.broadcast_to(chunk, scores.shape)], axis=1)
        keep = np.argsort(-best, axis=1)[:, :K]
        best = np.take_along_axis(best, keep, axis=1)
        best_labels = np.take_along_axis(best_labels, keep, axis=1)
    out[:] = best_labels[:, :out.shape[1]]
    return out


def timed(fn, items) -> tuple[list, list[float]]:  # type: ignore[no-untyped-def]
    results, seconds = [], []
    for item in items:
        t = time.perf_counter()
        results.append(fn(item))
        seconds.append(time.perf_counter() - t)
    return results, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--e2e-queries", type=int, default=50, help="queries for the end-to-end figure")
    parser.add_argument("--filter-exact-max", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/clipsearch-bench-filters"))
    args = parser.parse_args()

    params = HnswParams()
    vectors = clustered(args.n, DIM, seed=0)
    buckets = np.random.default_rng(42).integers(0, BUCKETS, args.n)
    queries = clustered(args.queries, DIM, seed=1)
    data_dir = args.cache / f"n{args.n}-m{params.m}-efc{params.ef_construction}"
    if not (data_dir / "snapshot.json").exists():
        build(data_dir, vectors, buckets, params)
    started = time.monotonic()
    collection = Collection(data_dir, "bench", DIM, params, filter_exact_max=args.filter_exact_max,
                            seal_at=10 * args.n)
    print(f"collection opened in {time.monotonic() - started:.1f}s: {collection.stats().count} images", flush=True)
    set_threads(1)  # one query at a time on one thread, as a server runs them
    for q in queries[:20]:  # warm up caches and the SQLite connection
        collection.search(q, K)

    rows = []
    base = base_cached = base_p50 = None
    for pct in (None, *SELECTIVITIES):
        flt = None if pct is None else Filter(range=Range(field="bucket", lt=pct * BUCKETS / 100))
        if flt is None:
            matching = None
            eval_s = [0.0]
            hits, seconds = timed(lambda q: collection.search(q, K), queries)
            truth = exact_top(vectors, None, queries)
            plan = "graph"
        else:
            evaluated, eval_s = timed(lambda _: filters.matching_labels(collection.store, flt), range(5))
            matching = evaluated[0]
            hits, seconds = timed(lambda q: collection.search_among(q, K, matching), queries)
            truth = exact_top(vectors, matching, queries)
            plan = "exact" if len(matching) <= args.filter_exact_max else "graph"
        found = [[int(h.id[1:]) for h in row] for row in hits]
        want = min(K, args.n if matching is None else len(matching))
        e2e_queries = queries[:args.e2e_queries]
        _, e2e_s = timed(lambda q: query.run(collection, [query.Query(q, K, flt)]), e2e_queries)
        cache = query.LabelCache()  # as a server runs: queries sharing a filter evaluate it once per write
        _, cached_s = timed(lambda q: query.run(collection, [query.Query(q, K, flt)], cache), queries)
        qps = len(queries) / sum(seconds)
        if base is None:
            base, base_cached, base_p50 = qps, len(queries) / sum(cached_s), float(np.median(seconds))
        rows.append({
            "selectivity_pct": "none" if pct is None else pct,
            "matches": args.n if matching is None else len(matching),
            "plan": plan,
            "eval_ms": float(np.median(eval_s)) * 1000,
            "search_qps": qps,
            "x_unfiltered": qps / base,
            "x_unfiltered_p50": base_p50 / float(np.median(seconds)),
            **{f"search_{k}": v for k, v in percentiles(seconds).items() if k != "n"},
            "e2e_qps": len(e2e_queries) / sum(e2e_s),
            "e2e_cached_qps": len(queries) / sum(cached_s),
            "x_unfiltered_cached": len(queries) / sum(cached_s) / base_cached if base_cached else 1.0,
            f"recall@{K}": recall(np.array([f + [-1] * (K - len(f)) for f in found]), truth, min(K, want))
            if want else 1.0,
            "never_short": all(len(f) == want for f in found),
        })
        table(rows[-1:], list(rows[-1]))
    print()
    table(rows, list(rows[0]))
    save(f"filters-{args.n}", {"n": args.n, "dim": DIM, "k": K, "queries": args.queries,
                                "hnsw": params.__dict__, "filter_exact_max": args.filter_exact_max, "rows": rows})
    collection.close()


if __name__ == "__main__":
    main()
