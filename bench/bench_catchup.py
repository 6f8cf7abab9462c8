"""Catch-up latency of a replica on a shared PostgreSQL store: seconds from a committed write to its
being searchable on a server that did not make it (LISTEN/NOTIFY wake-up, feed read, mirror commit,
index add).

    python bench/bench_catchup.py [--vectors 10000] [--writes 300] [--batch 16] [--thumbnail-bytes 0] [--model SPEC]

Starts its own PostgreSQL cluster (clipsearch_devkit.pg) and one search server on it. The bench process is the
other writer: it commits batches of random unit vectors straight through `PgStore.upsert` (the code a
server runs for UpsertVectors), takes the time when the commit returned, then polls the server's
GetIndexStats every millisecond until `applied_position` reaches the write's position, and checks
the image is searchable (ImageSearch by id). Writes are spaced by --gap seconds (default 0.05).
With --thumbnail-bytes N every measured record carries a thumbnail of N bytes (a 256 px WebP is about
2-10 KB), which travels through the feed to the replica's mirror; the run then also checks that the
replica serves the last one (GetThumbnails).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import percentiles, save  # noqa: E402
from clipsearch.v1 import (  # noqa: E402
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
)
from clipsearch_devkit.pg import start_cluster  # noqa: E402
from clipsearch_devkit.procs import Stack, start_redis  # noqa: E402
from clipsearch_devkit.tinyclip import MODEL_SPEC  # noqa: E402
from clipsearch_server.storage.postgres import PgStore  # noqa: E402
from clipsearch_server.storage.records import ImageRecord  # noqa: E402

TINY = MODEL_SPEC


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=10_000, help="images in the collection before measuring")
    parser.add_argument("--writes", type=int, default=300, help="measured writes")
    parser.add_argument("--batch", type=int, default=16, help="records per measured write")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between measured writes")
    parser.add_argument("--thumbnail-bytes", type=int, default=0, help="size of each measured record's thumbnail "
                        "(0: none)")
    parser.add_argument("--model", default=TINY, help="model spec of the server (default: the devkit's tiny model)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-catchup-"))
    cluster = start_cluster()
    redis, redis_url = start_redis(work / "redis")
    server = None
    try:
        url = cluster.create_database()
        stack = Stack(model=args.model, redis_url=redis_url, log_dir=work / "logs")
        server, address = stack.start_server(work / "replica", extra=["--store", url])
        channel = grpc.insecure_channel(address)
        stats = index_grpc.IndexServiceStub(channel).GetIndexStats
        search = search_grpc.SearchServiceStub(channel)
        dim = stats(index_pb.GetIndexStatsRequest(), timeout=10).model.dim
        pg = PgStore(url)
        rng = np.random.default_rng(0)
        for start in range(0, args.vectors, 1000):
            n = min(1000, args.vectors - start)
            pg.upsert([ImageRecord(f"pre-{start + i}", v) for i, v in enumerate(unit(rng, n, dim))])
        _, head = pg.upsert([ImageRecord("warm", unit(rng, 1, dim)[0])])
        while stats(index_pb.GetIndexStatsRequest(), timeout=10).applied_position < head:
            time.sleep(0.05)
        seconds: list[float] = []
        for w in range(args.writes):
            ids = [f"w{w}-{i}" for i in range(args.batch)]
            thumb = {"thumbnail": rng.bytes(args.thumbnail_bytes), "thumbnail_mime_type": "image/webp"} \
                if args.thumbnail_bytes else {}
            _, position = pg.upsert([ImageRecord(i, v, **thumb) for i, v in zip(ids, unit(rng, args.batch, dim))])
            committed = time.perf_counter()
            while stats(index_pb.GetIndexStatsRequest(), timeout=10).applied_position < position:
                time.sleep(0.001)
            seconds.append(time.perf_counter() - committed)
            hit = search.ImageSearch(search_pb.ImageSearchRequest(id=ids[-1], k=1), timeout=10)
            assert len(hit.results) == 1
            time.sleep(args.gap)
        if args.thumbnail_bytes:
            served = search.GetThumbnails(search_pb.GetThumbnailsRequest(ids=[ids[-1]]), timeout=10)
            assert len(served.thumbnails[0].thumbnail.data) == args.thumbnail_bytes
        result = {"vectors": args.vectors, "writes": args.writes, "batch": args.batch, "dim": dim,
                  "thumbnail_bytes": args.thumbnail_bytes, "catchup": percentiles(seconds)}
        print(f"commit -> searchable on the replica: p50 {result['catchup']['p50_ms']:.1f} ms, "
              f"p99 {result['catchup']['p99_ms']:.1f} ms, max {max(seconds) * 1000:.1f} ms")
        save("catchup" + (f"-thumbnails-{args.thumbnail_bytes}" if args.thumbnail_bytes else ""), result)
        pg.close()
    finally:
        if server is not None:
            server.stop()
        redis.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
