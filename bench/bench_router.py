"""Router overhead: p50 TextSearch through `clipsearch router` over the same call made directly to a
search server, on the same index in the same run. Also: two shards (two servers, half the vectors each)
behind the router, and one of them called directly, for the cost of the fan-out and merge (every
shard encodes the query text itself, so on one machine the shards compete for its cores).

    python bench/bench_router.py [--model ViT-B-32 --pretrained none] [--vectors 20000] [--queries 300]

The router has one shard, that very server, so the only difference is the extra hop (the router parses
the request, forwards it, parses the reply and merges). Calls alternate direct / routed so drift hits
both alike; every query text is distinct (no cache hits). Goal: routed p50 <= 1.3x direct p50.
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
from bench.common import percentiles, save, table  # noqa: E402
from clipsearch.v1 import (  # noqa: E402
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
)
from clipsearch_core.shards import shard_of  # noqa: E402
from clipsearch_devkit.procs import Stack, start_redis, start_router  # noqa: E402
from clipsearch_devkit.tinyclip import MODEL_SPEC  # noqa: E402

COLORS = ["red", "blue", "green", "yellow", "black", "white", "silver", "orange"]
THINGS = ["sports car", "dog on a beach", "mountain lake at sunset", "bowl of ramen", "city street at night"]


def texts(n: int, tag: str) -> list[str]:
    return [f"a photo of a {COLORS[i % 8]} {THINGS[i % 5]}, {tag} {i}" for i in range(n)]


def fill(address: str, vectors: np.ndarray, ids: list[str]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = index_grpc.IndexServiceStub(channel)
        model = stub.GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=60).model
        for start in range(0, len(ids), 4000):
            stub.UpsertVectors(index_pb.UpsertVectorsRequest(model=model, records=[
                index_pb.VectorRecord(id=ids[i], vector=vectors[i].tobytes())
                for i in range(start, min(len(ids), start + 4000))]), timeout=600)


def timed(stub: search_grpc.SearchServiceStub, text: str) -> float:
    t = time.perf_counter()
    stub.TextSearch(search_pb.TextSearchRequest(text=text, k=10), timeout=300)  # first ViT queries warm up slowly
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=MODEL_SPEC)
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch/FAISS threads of each server")
    parser.add_argument("--name", default="router")
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis, url = start_redis(tmp / "logs")
        procs.append(redis)
        stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix="bench-router")
        stack.common = lambda: ["--model", args.model, "--pretrained", args.pretrained, "--redis-url", url,  # type: ignore[method-assign]
                                "--redis-prefix", stack.prefix, "--device", "cpu", "--threads", str(args.threads)]
        try:
            single, direct = stack.start_server(tmp / "single", timeout=600)
            shard_servers = [stack.start_server(tmp / f"s{i}", extra=["--shard", f"{i}/2"], timeout=600)
                             for i in (0, 1)]
            procs += [single, *(p for p, _ in shard_servers)]
            dim = index_grpc.IndexServiceStub(grpc.insecure_channel(direct)).GetIndexStats(
                index_pb.GetIndexStatsRequest(), timeout=60).model.dim
            vectors = np.random.default_rng(0).standard_normal((args.vectors, dim)).astype("<f4")
            ids = [f"v{i}" for i in range(args.vectors)]
            fill(direct, vectors, ids)
            for s, (_, address) in enumerate(shard_servers):
                mine = [i for i, image_id in enumerate(ids) if shard_of(image_id, 2) == s]
                fill(address, vectors[mine], [ids[i] for i in mine])
            wide = ["--shard-timeout", "60"]  # latency is measured here, not the deadline (first queries warm up)
            router1, routed1 = start_router(stack, [direct], wide)
            router2, routed2 = start_router(stack, [a for _, a in shard_servers], wide)
            procs += [router1, router2]
            stubs = {name: search_grpc.SearchServiceStub(grpc.insecure_channel(address))
                     for name, address in (("direct", direct), ("router, 1 shard (same server)", routed1),
                                           ("router, 2 shards", routed2),
                                           ("shard 0 of 2 directly", shard_servers[0][1]))}
            for stub in stubs.values():
                for text in texts(20, "warm-up"):
                    timed(stub, text)
            latencies: dict[str, list[float]] = {name: [] for name in stubs}
            for _i, text in enumerate(texts(args.queries, "query")):
                for name, stub in stubs.items():  # alternate: each round asks each path a distinct text
                    latencies[name].append(timed(stub, f"{text} {name}"))
        finally:
            for proc in reversed(procs):
                proc.stop()
    rows = [{"what": name, **percentiles(values)} for name, values in latencies.items()]
    direct_p50 = rows[0]["p50_ms"]
    ratios = {"router_1_shard_p50_vs_direct": rows[1]["p50_ms"] / direct_p50,
              "router_2_shards_p50_vs_direct": rows[2]["p50_ms"] / direct_p50}
    print(f"\n== TextSearch k=10, {args.model}, {args.vectors} vectors, 1 client ==")
    table(rows, ["what", "p50_ms", "p99_ms", "n"])
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    save(args.name, {"model": args.model, "vectors": args.vectors, "rows": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
