"""Crash tests: kill -9 workers and the server, restart Redis, compact under load. Nothing is lost
and nothing is duplicated. Every process is bounded in time and stopped at the end."""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipsearch import Client
from clipsearch.v1 import index_service_pb2, index_service_pb2_grpc, types_pb2
from clipsearch_core.model import ModelSpec, load_encoder
from clipsearch_devkit.data import submit_all, synthetic_inputs, wait_until
from clipsearch_devkit.procs import Proc, Stack, free_port, spawn, start_redis, wait_for
from clipsearch_server.storage.sqlite import ImageRecord, SqliteStore as Store

pytestmark = pytest.mark.timeout(300)

FAST_RECLAIM = ["--visibility-timeout", "2", "--batch-size", "8"]


def assert_each_indexed_once(client: Client, ids: list[str]) -> None:
    assert client.stats().count == len(ids)
    progress = client.progress()
    assert progress.failed == 0 and progress.pending == 0
    for image_id in ids:
        assert len(client.image_search(id=image_id, k=1)) == 1  # NOT_FOUND would raise


def test_worker_killed_repeatedly(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    client = Client(address)
    inputs = synthetic_inputs(per_class=25, seed=11)  # 600 images
    batch = submit_all(client, inputs)
    rng = random.Random(5)
    extra = ["--visibility-timeout", "2", "--batch-size", "4", "--max-deliveries", "50"]
    killed_mid_ingestion = 0
    for n in range(6):
        worker = stack.start_worker(address, extra, name=f"worker-{n}")
        procs.append(worker)
        wait_for(lambda: "ready" in worker.output(), 60, "worker", worker.popen)
        time.sleep(rng.uniform(0.05, 0.4))
        worker.kill()
        killed_mid_ingestion += client.progress(batch).pending > 0
    assert killed_mid_ingestion >= 3, "the kills did not land during ingestion; use more images"
    procs.append(stack.start_worker(address, extra, name="worker-last"))
    wait_until(client, batch, 150)
    assert_each_indexed_once(client, [i.id for i in inputs])
    assert client.progress(batch).indexed == len(inputs)


def test_server_killed_mid_ingestion(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    server, address = stack.start_server(tmp_path / "data", port=port)
    procs.append(server)
    worker = stack.start_worker(address, FAST_RECLAIM)
    procs.append(worker)
    client = Client(address)
    inputs = synthetic_inputs(per_class=12, seed=12)
    batch = submit_all(client, inputs)
    wait_until(client, batch, 120, lambda p: p.indexed >= 60)
    acknowledged = client.stats().count
    server.kill()
    # what a kill -9 in the middle of a snapshot's save leaves (as large as the index): deleted at start
    (tmp_path / "data" / "index-4096.faiss.tmp").write_bytes(b"\0" * 100_000)
    restarted, _ = stack.start_server(tmp_path / "data", port=port)
    procs.append(restarted)
    assert not list((tmp_path / "data").glob("*.tmp"))
    assert client.stats().count >= acknowledged  # nothing acknowledged was lost
    wait_until(client, batch, 150)
    assert_each_indexed_once(client, [i.id for i in inputs])
    assert worker.popen.poll() is None  # the worker rode out the outage


def test_redis_restarted_during_ingestion(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    redis_port = free_port()
    redis_dir = tmp_path / "redis"
    redis, url = start_redis(tmp_path / "logs", port=redis_port, data_dir=redis_dir, appendonly=True)
    procs.append(redis)
    stack.redis_url = url
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    worker = stack.start_worker(address, ["--visibility-timeout", "3", "--batch-size", "8"])
    procs.append(worker)
    client = Client(address)
    inputs = synthetic_inputs(per_class=12, seed=13)
    batch = submit_all(client, inputs)
    wait_until(client, batch, 120, lambda p: p.indexed >= 40)
    assert redis.stop() == 0  # SIGTERM: Redis flushes its append-only file
    time.sleep(1.0)
    redis2, _ = start_redis(tmp_path / "logs", port=redis_port, data_dir=redis_dir, appendonly=True)
    procs.append(redis2)
    wait_until(client, batch, 150)
    assert_each_indexed_once(client, [i.id for i in inputs])


def test_results_identical_after_restarts(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    server, address = stack.start_server(tmp_path / "data", port=port)
    procs.append(server)
    procs.append(stack.start_worker(address, FAST_RECLAIM))
    client = Client(address)
    batch = submit_all(client, synthetic_inputs(per_class=8, seed=14))
    wait_until(client, batch, 120)
    queries = [f"a {c} {s}" for c in ("red", "blue", "yellow") for s in ("circle", "star")]

    def answers() -> list[list[tuple[str, float]]]:
        return [[(r.id, round(r.score, 4)) for r in client.text_search(q, k=10)] for q in queries]

    before = answers()
    assert server.stop() == 0  # graceful: drains and writes a snapshot
    assert (tmp_path / "data" / "snapshot.json").exists()
    assert "snapshot written" in server.output()
    server2, _ = stack.start_server(tmp_path / "data", port=port)
    procs.append(server2)
    assert answers() == before
    assert "0 replayed" in server2.output()  # loaded from the snapshot, nothing re-embedded or rebuilt
    server2.kill()  # and after kill -9
    server3, _ = stack.start_server(tmp_path / "data", port=port)
    procs.append(server3)
    assert answers() == before


def test_search_load_during_compaction(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    server, address = stack.start_server(
        tmp_path / "data", extra=["--compact-ratio", "0.2", "--compact-min", "100"])
    procs.append(server)
    client = Client(address)
    stats = client.stats()
    rng = np.random.default_rng(0)
    n = 12_000
    vectors = rng.standard_normal((n, stats.dim)).astype("<f4")
    with grpc.insecure_channel(address) as channel:
        stub = index_service_pb2_grpc.IndexServiceStub(channel)
        for start in range(0, n, 2000):
            stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                model=types_pb2.ModelInfo(name=stats.model, dim=stats.dim),
                records=[index_service_pb2.VectorRecord(id=f"v{i}", vector=vectors[i].tobytes())
                         for i in range(start, min(n, start + 2000))]), timeout=120)
    assert client.stats().count == n

    errors: list[BaseException] = []
    latencies: list[float] = []
    deleted = {f"v{i}" for i in range(0, n, 4)}  # 25 %: above the threshold
    stop = threading.Event()

    def load() -> None:
        with Client(address, timeout=30) as c:
            while not stop.is_set():
                try:
                    t = time.perf_counter()
                    c.text_search("a red circle", k=10)
                    latencies.append(time.perf_counter() - t)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        ids = sorted(deleted)
        for start in range(0, len(ids), 1000):
            client.delete(ids[start : start + 1000])
        wait_for(lambda: "compaction:" in server.output(), 120, "compaction")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:3]
    assert len(latencies) > 20
    after = client.stats()
    assert after.count == n - len(deleted)
    assert after.stale_entries < len(deleted) - 1000  # the rebuilt graph dropped the tombstones it saw
    for i in range(0, 400, 4):  # a deleted vector's own query no longer finds it
        hits = client.image_search(id=f"v{i + 1}", k=10)
        assert not deleted & {h.id for h in hits}


def test_not_serving_while_loading_then_serving(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    """A server with many stored vectors and no snapshot rebuilds its graph on start: meanwhile
    health says NOT_SERVING and the API says UNAVAILABLE; then SERVING."""
    encoder = load_encoder(ModelSpec(stack.model, device="cpu"))
    store = Store(tmp_path / "data" / "images.sqlite3")
    store.set_meta("model", encoder.identity)
    store.set_meta("dim", str(encoder.dim))
    rng = np.random.default_rng(1)
    for start in range(0, 40_000, 10_000):
        v = rng.standard_normal((10_000, encoder.dim)).astype(np.float32)
        store.upsert([ImageRecord(f"v{start + i}", v[i]) for i in range(10_000)])
    store.close()
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs.append(spawn("server", [sys.executable, "-m", "clipsearch_server", *stack.common(), "--host", "127.0.0.1",
                                  "--port", str(port), "--data-dir", str(tmp_path / "data")], stack.log_dir))
    seen: list[str] = []
    unavailable = False
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel, Client(address, timeout=5) as client:
        health = health_pb2_grpc.HealthStub(channel)
        index = index_service_pb2_grpc.IndexServiceStub(channel)  # no retry policy: the client's retries
        # of UNAVAILABLE (up to ~1.4 s) can outlast a short loading window on a busy machine
        while time.monotonic() < deadline and seen[-1:] != ["SERVING"]:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError:
                status = "DOWN"  # not listening yet
            if seen[-1:] != [status]:
                seen.append(status)
            if status == "NOT_SERVING" and not unavailable:
                try:
                    index.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=5)
                except grpc.RpcError as exc:
                    unavailable = exc.code() == grpc.StatusCode.UNAVAILABLE and "loading" in (exc.details() or "")
            time.sleep(0.02)
        assert [s for s in seen if s != "DOWN"] == ["NOT_SERVING", "SERVING"], seen
        assert unavailable
        assert client.stats().count == 40_000
