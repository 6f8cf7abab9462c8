"""Write latency under search load: a real server process, N random vectors written through
UpsertVectors, then 10-record UpsertVectors calls alone and while C client threads run ImageSearch
by id (k=1000) as fast as they can; also the searches' throughput with and without the writes.

    python bench/bench_write_under_load.py [--model ViT-B-32 --pretrained none] [--vectors 20000]

Run it against other server code by putting that code first on PYTHONPATH (the server process
inherits it); --name picks the result file (bench/results/<name>.json).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import percentiles, save, table  # noqa: E402
from clipsearch import Client  # noqa: E402
from clipsearch.v1 import index_service_pb2, index_service_pb2_grpc, types_pb2  # noqa: E402
from clipsearch_devkit.procs import Stack, start_redis  # noqa: E402


def upserts(stub, model, rng: np.random.Generator, dim: int, n: int, gap_s: float, tag: str) -> list[float]:  # type: ignore[no-untyped-def]
    """n calls of 10 new records each, `gap_s` apart; returns each call's latency in seconds."""
    latencies = []
    for i in range(n):
        vectors = rng.standard_normal((10, dim)).astype("<f4")
        request = index_service_pb2.UpsertVectorsRequest(model=model, records=[
            index_service_pb2.VectorRecord(id=f"{tag}-{i}-{j}", vector=vectors[j].tobytes()) for j in range(10)])
        t = time.perf_counter()
        stub.UpsertVectors(request, timeout=60)
        latencies.append(time.perf_counter() - t)
        time.sleep(gap_s)
    return latencies


def search_load(address: str, ids: list[str], clients: int, k: int, stop: threading.Event) -> list[int]:
    """Starts `clients` threads running ImageSearch by id until `stop`; returns their live counters."""
    counts = [0] * clients

    def run(n: int) -> None:
        rng = np.random.default_rng(100 + n)
        with Client(address, timeout=60) as client:
            while not stop.is_set():
                client.image_search(id=ids[int(rng.integers(len(ids)))], k=k)
                counts[n] += 1

    for n in range(clients):
        threading.Thread(target=run, args=(n,), daemon=True).start()
    return counts


def measure_qps(counts: list[int], seconds: float) -> float:
    before = sum(counts)
    time.sleep(seconds)
    return (sum(counts) - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=60, help="10-record upserts per phase")
    parser.add_argument("--seconds", type=float, default=8.0, help="search-only measurement time")
    parser.add_argument("--name", default="write_under_load")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis, url = start_redis(tmp / "logs")
        stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix="bench-wul")
        stack.common = lambda: ["--model", args.model, "--pretrained", args.pretrained, "--redis-url", url,  # type: ignore[method-assign]
                                "--redis-prefix", stack.prefix, "--device", "cpu"]
        server, address = stack.start_server(tmp / "data", timeout=600)
        try:
            with Client(address) as client, grpc.insecure_channel(address) as channel:
                stats = client.stats()
                model = types_pb2.ModelInfo(name=stats.model, dim=stats.dim)
                stub = index_service_pb2_grpc.IndexServiceStub(channel)
                started = time.perf_counter()
                for start in range(0, args.vectors, 2000):
                    vectors = rng.standard_normal((min(2000, args.vectors - start), stats.dim)).astype("<f4")
                    stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(model=model, records=[
                        index_service_pb2.VectorRecord(id=f"v{start + i}", vector=v.tobytes())
                        for i, v in enumerate(vectors)]), timeout=600)
                print(f"loaded {args.vectors} vectors in {time.perf_counter() - started:.1f}s")
                ids = [f"v{i}" for i in range(args.vectors)]
                alone = upserts(stub, model, rng, stats.dim, args.writes, 0.02, "alone")
                stop = threading.Event()
                counts = search_load(address, ids, args.clients, args.k, stop)
                time.sleep(1.0)  # warm up
                qps_alone = measure_qps(counts, args.seconds)
                before, t = sum(counts), time.perf_counter()
                loaded = upserts(stub, model, rng, stats.dim, args.writes, 0.05, "loaded")
                qps_with_writes = (sum(counts) - before) / (time.perf_counter() - t)
                stop.set()
                time.sleep(1.0)
        finally:
            server.stop()
            redis.stop()
    rows = [
        {"what": "UpsertVectors (10 records) alone", **percentiles(alone)},
        {"what": f"UpsertVectors (10 records) under {args.clients} ImageSearch clients", **percentiles(loaded)},
        {"what": f"ImageSearch by id k={args.k}, {args.clients} clients, no writes", "qps": qps_alone},
        {"what": f"ImageSearch by id k={args.k}, {args.clients} clients, with writes", "qps": qps_with_writes},
    ]
    ratios = {"upsert_p99_loaded_vs_alone": rows[1]["p99_ms"] / rows[0]["p99_ms"],
              "search_qps_with_writes_vs_without": qps_with_writes / qps_alone}
    print(f"\n== write latency under search load, {args.model}, {args.vectors} vectors ==")
    table(rows, ["what", "qps", "p50_ms", "p99_ms", "n"])
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    save(args.name, {"model": args.model, "vectors": args.vectors, "clients": args.clients, "k": args.k,
                     "rows": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
