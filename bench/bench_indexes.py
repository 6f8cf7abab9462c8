"""Index kinds side by side (issue 10): recall@10, single-thread queries/s, build time and resident memory
per vector measured from the process, for each kind on the same clustered 512-d vectors, against two
query sets: held-out data points, and out-of-distribution "text-like" queries.

The kinds are the product's own (clipsearch_server.index.make_index with the specs kinds.py picks), built
the way the collection builds them: trained on a strided sample, vectors added with their labels, the
exact vectors of compressed kinds written to a VectorFile on disk and read through mmap for re-ranking.

Text-like queries imitate CLIP's modality gap: text vectors sit in another cone than image vectors.
Each is normalize(0.35 * h + 0.8 * o + 0.45 * e): h a held-out data point (the "meaning"), o ONE shared
random unit offset (the gap, the same for every query), e fresh random noise (a different spread);
their cosine to their nearest data points is about 0.3-0.4, like CLIP text-to-image scores.

Memory: RssAnon (anonymous resident memory) of this process before and after the build, after the
training sample and inputs are freed: the index's own RAM. RssFile (page cache mapped from the vector
file) is reported apart: those pages are reclaimable and need not stay resident.

Run: nice -n 10 python bench/bench_indexes.py --n 1000000 --n-graph 200000
  (--n-graph: the HNSW kinds are built on the first n-graph vectors when building them on n would take
  too long on this machine; their bytes/vector do not depend on n, their recall is measured at n-graph.)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402  (the bench measures faiss directly for the exact baseline)

from bench.bench_index import clustered, recall  # noqa: E402
from bench.common import save, table  # noqa: E402
from clipsearch_server.collection.collection import TRAIN_SAMPLE_MAX  # noqa: E402
from clipsearch_server.index import kinds  # noqa: E402
from clipsearch_server.index.vector_index import HnswParams, IndexOptions, SearchParams, make_index, normalize  # noqa: E402
from clipsearch_server.index.vectorfile import VectorFile  # noqa: E402

K = 10


def rss() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def text_like(held_out: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    offset = normalize(rng.standard_normal((1, held_out.shape[1])).astype(np.float32))
    noise = normalize(rng.standard_normal(held_out.shape).astype(np.float32))
    return normalize(0.35 * held_out + 0.8 * offset + 0.45 * noise)


def exact(base: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Ground truth (all threads) and the single-thread exact queries/s (one query at a time)."""
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, truth = flat.search(queries, K)
    faiss.omp_set_num_threads(1)
    sample = queries[:50]
    started = time.perf_counter()
    for q in sample:
        flat.search(q[None, :], K)
    qps = len(sample) / (time.perf_counter() - started)
    return truth, qps


def build(spec: str, base: np.ndarray, workdir: Path, params: HnswParams, threads: int) -> tuple[object, dict]:
    faiss.omp_set_num_threads(threads)
    gc.collect()
    before = rss()
    started = time.perf_counter()
    vectors = VectorFile(workdir / f"{spec.replace(',', '_')}.f32", base.shape[1])
    index = make_index(spec, base.shape[1], params, IndexOptions(), vectors, trained_on=len(base))
    train_s = 0.0
    if not index.is_trained:
        step = max(1, math.ceil(len(base) / TRAIN_SAMPLE_MAX))  # the collection's sampling rule
        sample = np.ascontiguousarray(base[::step])
        index.train(sample)
        del sample
        train_s = time.perf_counter() - started
    labels = np.arange(len(base), dtype=np.int64)
    for start in range(0, len(base), 50_000):
        index.add(labels[start:start + 50_000], base[start:start + 50_000])
    build_s = time.perf_counter() - started
    gc.collect()
    after = rss()
    return index, {
        "spec": spec, "n": len(base), "build_s": round(build_s, 1), "train_s": round(train_s, 1),
        "ram_bytes_per_vector": round((after["RssAnon"] - before["RssAnon"]) / len(base), 1),
        "page_cache_bytes_per_vector": round((after["RssFile"] - before["RssFile"]) / len(base), 1),
        "structure_bytes_per_vector": round(index.memory_bytes() / len(base), 1),
        "disk_bytes_per_vector": round(index.disk_bytes() / len(base), 1),
    }


def measure(index: object, sets: dict[str, tuple[np.ndarray, np.ndarray]], options: IndexOptions,
            ef: int, exact_qps: float) -> dict:
    faiss.omp_set_num_threads(1)
    index.options = options  # type: ignore[attr-defined]  (search options only; the index is unchanged)
    row: dict = {"nprobe": options.nprobe if getattr(index, "nlist", 0) else None,
                 "rerank": options.rerank if index.disk_bytes() else None, "ef_search": ef}  # type: ignore[attr-defined]
    for name, (queries, truth) in sets.items():
        found = np.empty((len(queries), K), dtype=np.int64)
        started = time.perf_counter()
        for i, q in enumerate(queries):
            found[i] = index.search(q[None, :], K, SearchParams(ef_search=ef))[1][0]  # type: ignore[attr-defined]
        qps = len(queries) / (time.perf_counter() - started)
        row[f"recall_{name}"] = round(recall(found, truth), 4)
        row[f"qps_{name}"] = round(qps, 1)
        row[f"x_exact_{name}"] = round(qps / exact_qps, 1)
    return row


def run_kind(kind: str, args: argparse.Namespace) -> list[dict]:
    """Builds and measures one kind (in its own process, so that RSS deltas are the index's alone)."""
    n = (args.n_graph or args.n) if kind.startswith("hnsw") else args.n
    base = clustered(n, args.dim, seed=1)
    held_out = clustered(args.queries, args.dim, seed=2)
    queries = {"held_out": held_out, "text_like": text_like(held_out, seed=3)}
    found = {name: exact(base, q) for name, q in queries.items()}
    exact_qps = found["held_out"][1]
    sets = {name: (queries[name], found[name][0]) for name in queries}
    params = HnswParams(m=32, ef_construction=100, ef_search=64)
    spec = kinds.spec_of(kind, args.dim, params.m, n)
    print(f"building {spec} on {n} vectors (exact search: {exact_qps:.1f} q/s single-thread)",
          file=sys.stderr, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        index, built = build(spec, base, Path(tmp), params, args.threads)
        print(built, file=sys.stderr, flush=True)
        if kind == "ivf-pq":
            sweeps = [(IndexOptions(nprobe, rerank), 64) for nprobe in (8, 16, 32) for rerank in (5, 10, 20)]
        elif kind == "hnsw-sq8":
            sweeps = [(IndexOptions(1, rerank), ef) for ef in (64, 128) for rerank in (0, 2, 4)]
        else:
            sweeps = [(IndexOptions(), ef) for ef in (64, 128, 256)]
        for options, ef in sweeps:
            rows.append({"kind": kind, "exact_qps": round(exact_qps, 1), **built,
                         **measure(index, sets, options, ef, exact_qps)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--n-graph", type=int, default=0, help="vectors for the HNSW kinds (0: --n)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="build threads")
    parser.add_argument("--kinds", default="ivf-pq,hnsw-sq8,hnsw")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: measure one kind, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_kind(args.one, args)))
        return
    results = []
    for kind in args.kinds.split(","):
        argv = [sys.executable, __file__, "--one", kind, *sys.argv[1:]]
        out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
        results += json.loads(out.strip().splitlines()[-1])
    table(results, ["kind", "n", "nprobe", "rerank", "ef_search", "recall_held_out", "recall_text_like", "qps_held_out",
                    "qps_text_like", "x_exact_held_out", "x_exact_text_like", "exact_qps", "build_s", "train_s",
                    "ram_bytes_per_vector", "structure_bytes_per_vector", "disk_bytes_per_vector"])
    save("bench_indexes", {"n": args.n, "n_graph": args.n_graph or args.n, "dim": args.dim, "queries": args.queries,
                           "build_threads": args.threads, "results": results})


if __name__ == "__main__":
    main()
