"""Upsert latency during snapshots: a Collection (in process) with N random 512-d vectors, a thread
upserting 10 records every 50 ms, and forced snapshots meanwhile. Reports upsert latency with no
snapshot running and during snapshots, and each snapshot's duration (with a segmented index, the
build is sealed into the graph first, so each snapshot seals only what came since).

    python bench/bench_snapshot_stall.py [--vectors 100000] [--dim 512] [--snapshots 3]

Put other server code first on PYTHONPATH to measure it; --name picks bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import percentiles, save, table  # noqa: E402
from clipsearch_server.collection.collection import Collection  # noqa: E402
from clipsearch_server.index.vector_index import HnswParams  # noqa: E402
from clipsearch_server.storage.records import ImageRecord  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--ef-construction", type=int, default=40,
                        help="build speed only; snapshot cost does not depend on it")
    parser.add_argument("--name", default="snapshot_stall")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        col = Collection(Path(tmp), "bench@1", args.dim,
                         HnswParams(m=32, ef_construction=args.ef_construction, ef_search=64))
        started = time.perf_counter()
        for start in range(0, args.vectors, 5000):
            vectors = rng.standard_normal((min(5000, args.vectors - start), args.dim)).astype(np.float32)
            col.upsert([ImageRecord(f"v{start + i}", v) for i, v in enumerate(vectors)])
        if hasattr(col, "seal"):  # segmented index: move the build into the graph, as the periodic seal would
            col.seal()
        print(f"built {args.vectors} vectors in {time.perf_counter() - started:.1f}s")
        snapshotting = threading.Event()
        stop = threading.Event()
        quiet: list[float] = []
        during: list[float] = []

        def writer() -> None:
            n = 0
            while not stop.is_set():
                vectors = rng.standard_normal((10, args.dim)).astype(np.float32)
                overlapped = snapshotting.is_set()
                t = time.perf_counter()
                col.upsert([ImageRecord(f"w{n}-{j}", vectors[j]) for j in range(10)])
                latency = time.perf_counter() - t
                (during if overlapped or snapshotting.is_set() else quiet).append(latency)
                n += 1
                time.sleep(0.05)

        thread = threading.Thread(target=writer)
        thread.start()
        durations = []
        try:
            time.sleep(3)
            for _ in range(args.snapshots):
                snapshotting.set()
                t = time.perf_counter()
                col.snapshot(force=True)
                durations.append(time.perf_counter() - t)
                snapshotting.clear()
                time.sleep(2)
        finally:
            stop.set()
            thread.join(30)
        col.close()
    rows = [{"what": "upsert 10 records, no snapshot running", **percentiles(quiet), "max_ms": max(quiet) * 1000},
            {"what": "upsert 10 records, during a snapshot", **percentiles(during), "max_ms": max(during) * 1000},
            {"what": "snapshot duration", **percentiles(durations), "max_ms": max(durations) * 1000}]
    print(f"\n== upserts during snapshots, {args.vectors} x {args.dim}-d ==")
    table(rows, ["what", "p50_ms", "p99_ms", "max_ms", "n"])
    save(args.name, {"vectors": args.vectors, "dim": args.dim, "rows": rows})


if __name__ == "__main__":
    main()
