"""Index benchmark: recall@10 against exact search and single-thread queries/s for HNSW at several
efSearch values, build time and memory per vector, plus compressed options (HNSW+SQ8, IVF-PQ).

    python bench/bench_index.py --n 100000 [--n 1000000] [--queries 500]

Vectors: 512-d unit vectors with a low intrinsic dimension, like CLIP embeddings: points around
1000 centres in a 64-d latent space, mapped to 512-d by a fixed random linear map, plus a little
isotropic noise. (Isotropic noise in all 512 dimensions makes every neighbour nearly equidistant,
which no real embedding set looks like.) HNSW+SQ8 is skipped above 500k vectors to bound the run.
The HNSW index is the product's own (clipsearch_server.index.HnswIndex); the flat and compressed
ones are built with faiss directly for comparison. Every figure of one size comes from one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import save, table  # noqa: E402
from clipsearch_server.index.vector_index import HnswIndex, HnswParams, normalize  # noqa: E402

EF_VALUES = (16, 32, 64, 128, 256)


def clustered(n: int, dim: int, seed: int, centres: int = 1000, latent: int = 64) -> np.ndarray:
    structure = np.random.default_rng(0)  # the same centres and map for base and query sets
    c = structure.standard_normal((centres, latent)).astype(np.float32)
    mapping = structure.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        z = c[rng.integers(0, centres, m)] + 0.6 * rng.standard_normal((m, latent)).astype(np.float32)
        out[start:start + m] = z @ mapping + 0.05 * rng.standard_normal((m, dim)).astype(np.float32)
    return normalize(out)


def recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def timed_search(search, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    """Searches one query at a time (as a server does) and returns (labels, queries per second)."""
    labels = np.empty((len(queries), k), dtype=np.int64)
    t = time.perf_counter()
    for i, q in enumerate(queries):
        labels[i] = search(q[None, :], k)[1][0]
    return labels, len(queries) / (time.perf_counter() - t)


def file_bytes(write) -> int:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.index"
        write(path)
        return path.stat().st_size


def run(n: int, dim: int, nq: int, k: int) -> dict:
    faiss.omp_set_num_threads(1)
    base = clustered(n, dim, seed=1)
    queries = clustered(nq, dim, seed=2)
    rows: list[dict] = []

    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    truth, exact_qps = timed_search(flat.search, queries, k)
    rows.append({"index": "Flat (exact)", "param": "", "recall@10": 1.0, "qps": exact_qps, "speedup": 1.0,
                 "bytes/vector": dim * 4, "build_s": 0.0})

    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    t = time.perf_counter()
    hnsw = HnswIndex(dim, HnswParams(m=32, ef_construction=100, ef_search=16))
    for start in range(0, n, 50_000):
        hnsw.add(np.arange(start, min(n, start + 50_000)), base[start:start + 50_000])
    build_s = time.perf_counter() - t
    size = file_bytes(hnsw.save)
    faiss.omp_set_num_threads(1)
    for ef in EF_VALUES:
        hnsw.params = HnswParams(32, 100, ef)
        found, qps = timed_search(hnsw.search, queries, k)
        rows.append({"index": "HNSW32,Flat (product)", "param": f"efSearch={ef}", "recall@10": recall(found, truth),
                     "qps": qps, "speedup": qps / exact_qps, "bytes/vector": size / n, "build_s": build_s})
    del hnsw

    if n <= 500_000:
        _hnsw_sq8(n, dim, rows, exact_qps, base, queries, truth, k)
    _ivfpq(n, dim, rows, exact_qps, base, queries, truth, k)
    print(f"\n== {n} vectors, dim {dim}, {nq} queries, one thread per query ==")
    table(rows, ["index", "param", "recall@10", "qps", "speedup", "bytes/vector", "build_s"])
    return {"n": n, "dim": dim, "queries": nq, "rows": rows}


def _hnsw_sq8(n: int, dim: int, rows: list[dict], exact_qps: float, base: np.ndarray, queries: np.ndarray,
              truth: np.ndarray, k: int) -> None:
    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    t = time.perf_counter()
    sq = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
    sq.hnsw.efConstruction = 100
    sq.train(base[: min(n, 100_000)])
    sq.add(base)
    sq_build = time.perf_counter() - t
    sq_size = file_bytes(lambda p: faiss.write_index(sq, str(p)))
    faiss.omp_set_num_threads(1)
    for ef in EF_VALUES[1:]:
        params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
        found, qps = timed_search(lambda q, kk: sq.search(q, kk, params=params), queries, k)
        rows.append({"index": "HNSW32,SQ8", "param": f"efSearch={ef}", "recall@10": recall(found, truth), "qps": qps,
                     "speedup": qps / exact_qps, "bytes/vector": sq_size / n, "build_s": sq_build})


def _ivfpq(n: int, dim: int, rows: list[dict], exact_qps: float, base: np.ndarray, queries: np.ndarray,
           truth: np.ndarray, k: int) -> None:
    faiss.omp_set_num_threads(1)  # k-means here is slower with OpenMP on a busy 2-core machine
    nlist = 1024 if n >= 500_000 else 256
    t = time.perf_counter()
    factory_index = faiss.index_factory(dim, f"IVF{nlist},PQ64", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(factory_index)  # the factory's proxy owns the index: keep it alive
    ivf.cp.niter = 10  # k-means iterations: bounded training time
    ivf.pq.cp.niter = 10
    ivf.train(base[: min(n, 40 * nlist)])
    ivf.add(base)
    ivf_build = time.perf_counter() - t
    ivf_size = file_bytes(lambda p: faiss.write_index(ivf, str(p)))
    faiss.omp_set_num_threads(1)
    for nprobe in (8, 32, 128):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        found, qps = timed_search(lambda q, kk: ivf.search(q, kk, params=params), queries, k)
        rows.append({"index": f"IVF{nlist},PQ64", "param": f"nprobe={nprobe}", "recall@10": recall(found, truth),
                     "qps": qps, "speedup": qps / exact_qps, "bytes/vector": ivf_size / n, "build_s": ivf_build})


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results):
        kinds = dict.fromkeys(r["index"] for r in res["rows"])
        for kind in kinds:
            rows = [r for r in res["rows"] if r["index"] == kind]
            ax.plot([r["recall@10"] for r in rows], [r["qps"] for r in rows], "o-", label=kind)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries/s (1 thread)")
        ax.set_title(f"{res['n']:,} x {res['dim']}-d")
        ax.axvline(0.95, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, action="append", help="index sizes (repeatable)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--plot", type=Path,
                        default=Path(__file__).resolve().parent.parent / "docs" / "index-recall-qps.png")
    args = parser.parse_args()
    results = [run(n, args.dim, args.queries, 10) for n in (args.n or [100_000])]
    save("index", {"results": results})
    plot(results, args.plot)


if __name__ == "__main__":
    main()
