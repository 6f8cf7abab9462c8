"""Cold start: time to serve with N stored vectors, loading the snapshot (what a restart does)
versus rebuilding the HNSW graph from the stored vectors (what a restart without snapshots does).

    python bench/bench_coldstart.py --n 1000000 [--dim 512] [--dir /tmp/coldstart]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import save  # noqa: E402
from clipsearch_server.collection.collection import Collection  # noqa: E402
from clipsearch_server.index.snapshots import SNAPSHOT_POINTER  # noqa: E402
from clipsearch_server.storage.sqlite import (
    ImageRecord,  # noqa: E402
    SqliteStore as Store,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/clipsearch-coldstart"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    store = Store(args.dir / "images.sqlite3")
    store.set_meta("model", "bench")
    store.set_meta("dim", str(args.dim))
    for start in range(0, args.n, 20_000):
        m = min(20_000, args.n - start)
        v = rng.standard_normal((m, args.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.upsert([ImageRecord(f"img-{start + i}", v[i], f"/photos/{start + i}.jpg", {}) for i in range(m)])
    store.close()
    write_s = time.perf_counter() - t
    print(f"stored {args.n} vectors in {write_s:.1f}s")

    t = time.perf_counter()
    col = Collection(args.dir, "bench", args.dim)  # no snapshot yet: builds the graph from the store
    rebuild_s = time.perf_counter() - t
    print(f"rebuild from store: {rebuild_s:.1f}s")
    col.snapshot(force=True)
    col.close()
    assert (args.dir / SNAPSHOT_POINTER).exists()

    t = time.perf_counter()
    col = Collection(args.dir, "bench", args.dim)
    load_s = time.perf_counter() - t
    assert col.stats().count == args.n
    probe = col.store.vector_of("img-12345")
    assert col.search(probe, 1)[0].id == "img-12345"
    col.close()
    print(f"snapshot load: {load_s:.1f}s  ->  {rebuild_s / load_s:.1f}x faster than rebuilding")
    save("coldstart", {"n": args.n, "dim": args.dim, "store_write_s": write_s, "rebuild_s": rebuild_s,
                       "snapshot_load_s": load_s, "speedup": rebuild_s / load_s})
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
