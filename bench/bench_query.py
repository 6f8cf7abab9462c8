"""Query latency and throughput: TextSearch and ImageSearch over gRPC at 1, 8 and 32 concurrent
clients, against the same encode + search done in-process, and against encoding one full-length
query at a time (no truncation, no batching) as the baseline for throughput.

    python bench/bench_query.py [--model ViT-B-32 --pretrained none] [--vectors 100000]
    python bench/bench_query.py --decompose [--pin] [--vectors 20000] [--queries 200]

--decompose: where the time of one TextSearch goes, measured interleaved query by query (in-process
encode + search, in-process search alone, the in-process query planner (`query.run`: the search plus
the page the server cuts, with its spare candidates, re-scoring and next-page token), TextSearch over
gRPC, the same with a repeated text, which the server's cache answers without encoding, and a bare gRPC
health check), so that drift between them does not decide the differences.

Every query text is distinct (no cache hits). The index holds random unit vectors of the model's
dimension, written through the real UpsertVectors API.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

import clipsearch_core  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import percentiles, save, table  # noqa: E402
from clipsearch import Client  # noqa: E402
from clipsearch.v1 import index_service_pb2, index_service_pb2_grpc, types_pb2  # noqa: E402
from clipsearch_core.model import ModelSpec, load_encoder  # noqa: E402
from clipsearch_devkit.photos import photo_jpeg  # noqa: E402
from clipsearch_devkit.procs import Stack, start_redis  # noqa: E402
from clipsearch_server.collection.collection import Collection  # noqa: E402
from clipsearch_server.index.vector_index import HnswParams  # noqa: E402
from clipsearch_server.search.query import (
    Query,  # noqa: E402
    run as plan_and_page,
)
from clipsearch_server.storage.records import ImageRecord  # noqa: E402

COLORS = ["red", "blue", "green", "yellow", "black", "white", "silver", "orange"]
THINGS = ["sports car", "dog on a beach", "mountain lake at sunset", "bowl of ramen", "city street at night",
          "cat asleep on a sofa", "wedding photo", "old wooden boat"]


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"a photo of a {COLORS[rng.integers(8)]} {THINGS[rng.integers(8)]}, picture {i}" for i in range(n)]


def load(address: str, call, queries: list, clients: int) -> dict:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [queries[i::clients] for i in range(clients)]

    def run(chunk: list) -> None:
        with Client(address, timeout=60) as client:
            for q in chunk:
                t = time.perf_counter()
                call(client, q)
                with lock:
                    latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"clients": clients, "qps": len(queries) / (time.perf_counter() - t), **percentiles(latencies)}


def decompose(args: argparse.Namespace, server_cores: set[int] | None, client_cores: set[int] | None) -> None:
    """One TextSearch's time split into encode, search and the per-call path, interleaved query by query."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def on(cores: set[int] | None) -> None:
        if cores:
            os.sched_setaffinity(0, cores)

    on(server_cores)
    encoder = load_encoder(ModelSpec(args.model, args.pretrained, args.device))
    vectors = np.random.default_rng(0).standard_normal((args.vectors, encoder.dim)).astype("<f4")
    samples: dict[str, list[float]] = {k: [] for k in ("inproc", "search", "page", "grpc", "cached", "health")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        col = Collection(tmp / "inproc", encoder.identity, encoder.dim, HnswParams())
        col.upsert([ImageRecord(f"v{i}", vectors[i]) for i in range(args.vectors)])
        redis, url = start_redis(tmp / "logs")
        stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix="bench-decompose")
        stack.common = lambda: ["--model", args.model, "--pretrained", args.pretrained, "--redis-url", url,  # type: ignore[method-assign]
                                "--redis-prefix", stack.prefix, "--device", args.device,
                                *(["--threads", "1"] if server_cores else [])]
        server, address = stack.start_server(tmp / "data", timeout=600)
        on(client_cores)
        try:
            with Client(address) as client, grpc.insecure_channel(address) as channel:
                stats = client.stats()
                stub = index_service_pb2_grpc.IndexServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                for start in range(0, args.vectors, 4000):
                    stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                        model=types_pb2.ModelInfo(name=stats.model, dim=stats.dim),
                        records=[index_service_pb2.VectorRecord(id=f"v{i}", vector=vectors[i].tobytes())
                                 for i in range(start, min(args.vectors, start + 4000))]), timeout=600)
                client.text_search("repeated", k=10)
                vector = encoder.encode_text(["repeated"])[0]
                time.sleep(3)  # the server seals what it was sent before the timed loop
                for _i, (a, b) in enumerate(zip(texts(args.queries, 1), texts(args.queries, 2))):
                    on(server_cores)
                    t = time.perf_counter()
                    col.search(encoder.encode_text([a])[0], 10)
                    samples["inproc"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    col.search(vector, 10)
                    samples["search"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    plan_and_page(col, [Query(vector, 10, fingerprint="decompose")])
                    samples["page"].append(time.perf_counter() - t)
                    on(client_cores)
                    for name, call in (("grpc", lambda: client.text_search(b, k=10)),
                                       ("cached", lambda: client.text_search("repeated", k=10)),
                                       ("health", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10))):
                        t = time.perf_counter()
                        call()
                        samples[name].append(time.perf_counter() - t)
        finally:
            server.stop()
            redis.stop()
            col.close()
    p50 = {name: float(np.percentile(values, 50)) * 1000 for name, values in samples.items()}
    rows = [{"what": what, **percentiles(samples[name])} for name, what in (
        ("inproc", "in-process encode + search"), ("search", "in-process search alone"),
        ("page", "in-process planner: search + page (query.run)"),
        ("grpc", "TextSearch over gRPC"), ("cached", "TextSearch over gRPC, repeated text (cache: no encode)"),
        ("health", "gRPC health check (bare call)"))]
    split = {"encode ms (inproc - search)": p50["inproc"] - p50["search"],
             "per-call path ms (cached - search)": p50["cached"] - p50["search"],
             "bare gRPC call ms": p50["health"],
             "page work ms (planner - search)": p50["page"] - p50["search"],
             "cached call beyond planner and bare call ms": p50["cached"] - p50["page"] - p50["health"],
             "gRPC - in-process ms": p50["grpc"] - p50["inproc"],
             "textsearch_p50_grpc_vs_inprocess": p50["grpc"] / p50["inproc"]}
    print(f"\n== TextSearch decomposed, {args.model} ({args.pretrained}), {args.vectors} vectors, "
          f"{'pinned' if server_cores else 'not pinned'}, {args.queries} interleaved rounds ==")
    table(rows, ["what", "p50_ms", "p99_ms", "n"])
    for k, v in split.items():
        print(f"{k}: {v:.2f}")
    save(args.name, {"model": args.model, "vectors": args.vectors, "pinned": bool(server_cores), "rows": rows,
                     "split": split})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=96)
    parser.add_argument("--name", default="query")
    parser.add_argument("--pin", action="store_true",
                        help="server and in-process reference on core 0 with 1 torch thread, clients on core 1: "
                             "per-call overhead without CPU contention")
    parser.add_argument("--decompose", action="store_true",
                        help="split one TextSearch's time (encode, search, per-call path), interleaved")
    args = parser.parse_args()
    server_cores, client_cores = ({0}, {1}) if args.pin else (None, None)
    if args.decompose:
        if server_cores:
            torch.set_num_threads(1)
        return decompose(args, server_cores, client_cores)
    if server_cores:
        os.sched_setaffinity(0, server_cores)  # the in-process reference and the server run here
        torch.set_num_threads(1)

    encoder = load_encoder(ModelSpec(args.model, args.pretrained, args.device))
    encoder.warm_up(images=1, texts=1)  # as the server does before serving: first-call costs out of the timings
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.vectors, encoder.dim)).astype("<f4")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # In-process reference: the same encode + search, no RPC.
        col = Collection(tmp / "inproc", encoder.identity, encoder.dim, HnswParams())
        for start in range(0, args.vectors, 10_000):
            col.upsert([ImageRecord(f"v{i}", vectors[i]) for i in range(start, min(args.vectors, start + 10_000))])
        inproc_text = []
        for q in texts(args.queries, 1):
            t = time.perf_counter()
            col.search(encoder.encode_text([q])[0], 10)
            inproc_text.append(time.perf_counter() - t)
        full = []
        for q in texts(args.queries // 2, 2):
            t = time.perf_counter()
            encoder.encode_text_reference([q])
            full.append(time.perf_counter() - t)
        photos = [photo_jpeg(i, 640, 480) for i in range(args.queries // 2)]
        inproc_image = []
        from clipsearch_core.images import LoadLimits, decode_image
        for p in photos:
            t = time.perf_counter()
            pixels = encoder.preprocess(decode_image(p, LoadLimits(), encoder.image_size))
            col.search(encoder.encode_images([pixels])[0], 10)
            inproc_image.append(time.perf_counter() - t)
        col.close()
        baseline_qps = len(full) / sum(full)
        rows.append({"what": "one full-length text at a time (baseline)", "clients": 1, "qps": baseline_qps,
                     **percentiles(full)})
        rows.append({"what": "TextSearch in-process (encode+search)", "clients": 1,
                     "qps": len(inproc_text) / sum(inproc_text), **percentiles(inproc_text)})
        rows.append({"what": "ImageSearch in-process (640x480 JPEG)", "clients": 1,
                     "qps": len(inproc_image) / sum(inproc_image), **percentiles(inproc_image)})
        del encoder

        redis, url = start_redis(tmp / "logs")
        stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix="bench-query")
        stack.common = lambda: ["--model", args.model, "--pretrained", args.pretrained, "--redis-url", url,  # type: ignore[method-assign]
                                "--redis-prefix", stack.prefix, "--device", args.device,
                                *(["--threads", "1"] if args.pin else [])]
        server, address = stack.start_server(tmp / "data", timeout=600)
        if client_cores:
            os.sched_setaffinity(0, client_cores)  # the server (a child) stays on its core
        try:
            with Client(address) as client, grpc.insecure_channel(address) as channel:
                stats = client.stats()
                stub = index_service_pb2_grpc.IndexServiceStub(channel)
                for start in range(0, args.vectors, 4000):
                    stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                        model=types_pb2.ModelInfo(name=stats.model, dim=stats.dim),
                        records=[index_service_pb2.VectorRecord(id=f"v{i}", vector=vectors[i].tobytes())
                                 for i in range(start, min(args.vectors, start + 4000))]), timeout=600)
                client.text_search("warm up", k=10)
                client.image_search(photos[0], k=10)
            for n, clients in enumerate((1, 8, 32)):
                r = load(address, lambda c, q: c.text_search(q, k=10), texts(args.queries * (1 + clients // 8), 10 + n),
                         clients)
                rows.append({"what": "TextSearch over gRPC", **r})
            for clients in (1, 8, 32):
                r = load(address, lambda c, p: c.image_search(p, k=10), photos, clients)
                rows.append({"what": "ImageSearch over gRPC (640x480 JPEG)", **r})
            # The same image queries against the same index, served without micro-batching.
            server.stop()
            if server_cores:
                os.sched_setaffinity(0, server_cores)
            server, address = stack.start_server(tmp / "data", extra=["--image-batch", "1"], timeout=600)
            if client_cores:
                os.sched_setaffinity(0, client_cores)
            Client(address).image_search(photos[0], k=10)
            for clients in (1, 8, 32):
                r = load(address, lambda c, p: c.image_search(p, k=10), photos, clients)
                rows.append({"what": "ImageSearch over gRPC, no batching (--image-batch 1)", **r})
        finally:
            server.stop()
            redis.stop()
    inproc_p50 = rows[1]["p50_ms"]
    grpc1 = next(r for r in rows if r["what"] == "TextSearch over gRPC" and r["clients"] == 1)
    grpc32 = next(r for r in rows if r["what"] == "TextSearch over gRPC" and r["clients"] == 32)
    image32 = next(r for r in rows if r["what"].startswith("ImageSearch over gRPC (") and r["clients"] == 32)
    image32_off = next(r for r in rows if r["what"].startswith("ImageSearch over gRPC, no") and r["clients"] == 32)
    ratios = {"textsearch_p50_grpc_vs_inprocess": grpc1["p50_ms"] / inproc_p50,
              "imagesearch_qps_32_clients_batched_vs_not": image32["qps"] / image32_off["qps"],
              "textsearch_qps_32_clients_vs_one_full_query_at_a_time": grpc32["qps"] / baseline_qps}
    print(f"\n== queries, {args.model} ({args.pretrained}), {args.vectors} vectors ==")
    table(rows, ["what", "clients", "qps", "p50_ms", "p99_ms", "n"])
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    save(args.name, {"model": args.model, "vectors": args.vectors, "pinned": args.pin, "rows": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
