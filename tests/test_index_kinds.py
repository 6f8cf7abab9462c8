"""Index kinds (issue 10): hnsw, hnsw-sq8, ivf-pq and a faiss factory string, each through the whole
stack (ingest, search, filters, delete, restart, stats), the kind recorded and refused on mismatch, and a
collection that starts empty, is served exactly, trains and retrains in the background while searches
and writes run, with no error and no wrong result during the switches. Thresholds are lowered by options."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from clipsearch.v1 import (
    index_service_pb2,
    index_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
    types_pb2,
)
from clipsearch_devkit.procs import Proc, Stack, free_port, spawn, wait_for
from clipsearch_server.api.errors import FailedPrecondition
from clipsearch_server.collection.collection import Collection
from clipsearch_server.index import kinds
from clipsearch_server.index.kinds import KindOptions
from clipsearch_server.index.vector_index import HnswParams, IndexOptions, normalize
from clipsearch_server.storage.records import ImageRecord

pytestmark = pytest.mark.timeout(240)

PARAMS = HnswParams(m=16, ef_construction=80, ef_search=64)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalize(rng.standard_normal((n, dim)).astype(np.float32))


def test_kind_rules() -> None:
    assert kinds.parse_bytes("8GiB") == 8 * 2**30 and kinds.parse_bytes("1.5TB") == 1_500_000_000_000
    with pytest.raises(ValueError, match="not a size"):
        kinds.parse_bytes("lots")
    assert kinds.nlist_for(1_000_000) == 1024 and kinds.nlist_for(400) == 8 and kinds.nlist_for(10) == 1
    assert kinds.spec_of("ivf-pq", 512, 32, 1_000_000) == "IVF1024_HNSW32,PQ64np"
    pick = {budget: kinds.choose(KindOptions("auto", kinds.parse_bytes(budget), 20_000), 10_000_000, 512, 32)
            for budget in ("64GiB", "20GiB", "2GiB", "100MiB")}
    assert [kinds.family(c.spec) for c in pick.values()] == ["hnsw", "hnsw-sq8", "ivf-pq", "ivf-pq"]
    assert "nothing fits" in pick["100MiB"].why and "<= budget" in pick["2GiB"].why
    opts = KindOptions("ivf-pq", train_min=300)
    assert kinds.rebuild_reason(opts, "Flat", 0, 299, "IVF4_HNSW32,PQ8np") is None
    assert kinds.rebuild_reason(opts, "Flat", 0, 300, "IVF4_HNSW32,PQ8np") == "training"
    assert kinds.rebuild_reason(opts, "IVF4_HNSW32,PQ8np", 300, 2999, "IVF64_HNSW32,PQ8np") is None
    assert kinds.rebuild_reason(opts, "IVF4_HNSW32,PQ8np", 300, 3000, "IVF64_HNSW32,PQ8np") == "retraining"
    assert kinds.train_min_for(KindOptions("ivf-pq", train_min=100), "IVF4_HNSW32,PQ8np") == 256
    assert kinds.train_sample_for("IVF32768_HNSW32,PQ64np", 100_000) == 1_310_720
    assert kinds.train_sample_for("HNSW32,SQ8", 100_000) == 100_000


def test_empty_collection_trains_and_retrains_while_searches_and_writes_run(tmp_path: Path) -> None:
    """ivf-pq from empty: exact until 300 vectors, trained in the background, retrained at 10x; a
    searcher thread checks every answer meanwhile (the query's own vector first, deleted ids never)."""
    dim, n = 32, 4500
    rng = np.random.default_rng(1)
    vectors = unit(rng, n, dim)
    options = KindOptions("ivf-pq", train_min=300, search=IndexOptions(nprobe=64, rerank=40))
    col = Collection(tmp_path, "m@1", dim, PARAMS, seal_at=200, kind=options)
    assert col.stats(report=True).index.training == "waiting-for-data" and col.stats(report=True).index.spec == "Flat"
    acked = [0]
    deleted: set[int] = set()  # deletes that have returned
    deleting: set[int] = set()  # deletes that have started (a search meanwhile may or may not see them)
    errors: list[str] = []
    specs: set[str] = set()
    stop = threading.Event()

    def search() -> None:
        local = np.random.default_rng(2)
        while not stop.is_set():
            if not acked[0]:
                stop.wait(0.001)
                continue
            i = int(local.integers(0, acked[0]))
            gone = set(deleted)  # taken before the search: these must not come back
            try:
                hits = col.search(vectors[i], 5)
            except Exception as exc:  # noqa: BLE001 - any error during a switch fails the test
                errors.append(repr(exc))
                continue
            specs.add(col.index.sealed.spec)
            if i not in deleting and (not hits or hits[0].id != str(i) or hits[0].score < 0.999):
                again = col.search(vectors[i], 5)[0].id
                errors.append(f"query {i}: got {[(h.id, round(h.score, 3)) for h in hits[:2]]}, then {again} "
                              f"({col.index.sealed.spec})")
            if {int(h.id) for h in hits} & gone:
                errors.append(f"query {i}: deleted ids returned")

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        for start in range(0, n, 100):
            col.upsert([ImageRecord(str(i), vectors[i]) for i in range(start, start + 100)])
            acked[0] = start + 100
            victims = [str(i) for i in range(start, start + 100, 25)]
            deleting.update(int(v) for v in victims)
            col.delete(victims)
            deleted.update(int(v) for v in victims)
            time.sleep(0.01)
        col.wait_for_compaction(60)
        col.upsert([ImageRecord("1", vectors[1])])  # a replacement: checks the thresholds again after the last rebuild
        col.wait_for_compaction(60)
        time.sleep(0.2)
    finally:
        stop.set()
        searcher.join(10)
    assert not errors, errors[:5]
    assert "Flat" in specs and any(s.startswith("IVF") for s in specs)
    report = col.stats(report=True).index
    assert report.training == "trained" and report.spec.startswith("IVF") and report.trained_on >= 3000  # retrained
    assert report.disk_bytes >= n * dim * 4 and 0 < report.bytes_per_vector < 4 * dim
    live = np.array(sorted(set(range(n)) - deleted))
    queries = unit(rng, 20, dim)
    found = [[int(h.id) for h in col.search(q, 10)]  for q in queries]
    exact = [set(live[np.argsort(-(vectors[live] @ q))[:10]].tolist()) for q in queries]
    recall = np.mean([len(set(f) & e) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.9, recall
    col.snapshot(force=True)
    col.close()
    reopened = Collection(tmp_path, "m@1", dim, PARAMS, seal_at=200, kind=options)
    assert reopened.loaded_from_snapshot and reopened.index.sealed.spec == report.spec
    assert [[int(h.id) for h in reopened.search(q, 10)]  for q in queries] == found
    reopened.close()
    (tmp_path / "snapshot.json").unlink()  # cold start without a snapshot: trained again from the store
    rebuilt = Collection(tmp_path, "m@1", dim, PARAMS, seal_at=200, kind=options)
    assert not rebuilt.loaded_from_snapshot and kinds.family(rebuilt.index.sealed.spec) == "ivf-pq"
    again = [[int(h.id) for h in rebuilt.search(q, 10)] for q in queries]
    assert np.mean([len(set(f) & e) / 10 for f, e in zip(again, exact)]) >= 0.9
    rebuilt.close()
    with pytest.raises(FailedPrecondition, match="created with --index ivf-pq; this server runs --index hnsw"):
        Collection(tmp_path, "m@1", dim, PARAMS, kind=KindOptions("hnsw"))
    with pytest.raises(FailedPrecondition, match="unknown index spec 'IVF9,PQ7'"):
        Collection(tmp_path / "other", "m@1", dim, PARAMS, kind=KindOptions("IVF9,PQ7"))


def test_auto_picks_from_the_budget_and_says_why(tmp_path: Path) -> None:
    dim = 32
    vectors = unit(np.random.default_rng(4), 600, dim)
    roomy = Collection(tmp_path / "roomy", "m@1", dim, PARAMS, kind=KindOptions("auto", kinds.parse_bytes("1GiB"), 300))
    roomy.upsert([ImageRecord(str(i), vectors[i]) for i in range(600)])
    report = roomy.stats(report=True).index
    assert report.spec == "HNSW16,Flat" and report.training == "not-needed" and "auto: hnsw needs" in report.choice
    roomy.close()
    tight = Collection(tmp_path / "tight", "m@1", dim, PARAMS, kind=KindOptions("auto", kinds.parse_bytes("8KiB"), 300))
    tight.upsert([ImageRecord(str(i), vectors[i]) for i in range(600)])
    tight.wait_for_compaction(60)
    report = tight.stats(report=True).index
    assert kinds.family(report.spec) == "ivf-pq" and report.training == "trained" and "nothing fits" in report.choice
    assert tight.search(vectors[5], 1)[0].id == "5"
    tight.close()


# --- through the whole stack: server processes, gRPC ----------------------------------------------

N = 400


def fields_of(i: int) -> dict[str, types_pb2.Value]:
    return {"n": types_pb2.Value(int_value=i)}


def ids(results: object) -> list[str]:
    return [r.id for r in results]  # type: ignore[attr-defined]


def exact_top(vectors: np.ndarray, query: np.ndarray, allowed: list[int], k: int) -> list[str]:
    allowed_arr = np.array(allowed)
    order = np.argsort(-(vectors[allowed_arr] @ query), kind="stable")[:k]
    return [f"v{i}" for i in allowed_arr[order]]


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-sq8", "ivf-pq", "IVF4,SQ8"])
def test_each_kind_through_the_stack(kind: str, stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    extra = ["--index", kind, "--train-min", "300", "--seal-at", "50", "--hnsw-m", "16", "--ef-search", "128",
             "--nprobe", "8", "--filter-exact-max", "10"]  # filters go through each kind's selector
    data = tmp_path / "data"
    server, address = stack.start_server(data, extra=extra)
    procs.append(server)
    with grpc.insecure_channel(address) as channel:
        index_stub = index_service_pb2_grpc.IndexServiceStub(channel)
        search_stub = search_service_pb2_grpc.SearchServiceStub(channel)
        stats = index_stub.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=10)
        assert stats.index_kind == kind and stats.train_min == 300
        trains = kind != "hnsw"
        assert stats.index_spec == ("Flat" if trains else "HNSW16,Flat")
        rng = np.random.default_rng(3)
        vectors = unit(rng, N, stats.model.dim)
        for start in range(0, N, 100):  # the exact phase ends at 300: training runs while the rest arrives
            index_stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                model=stats.model, records=[index_service_pb2.VectorRecord(
                    id=f"v{i}", vector=vectors[i].astype("<f4").tobytes(), fields=fields_of(i))
                    for i in range(start, start + 100)]), timeout=30)

        def current() -> index_service_pb2.GetIndexStatsResponse:
            return index_stub.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=10)

        wait_for(lambda: current().training in (index_service_pb2.INDEX_TRAINING_TRAINED,
                                                 index_service_pb2.INDEX_TRAINING_NOT_NEEDED), 60, "training")
        stats = current()
        assert stats.count == N and stats.memory_bytes > 0 and stats.bytes_per_vector > 0
        if trains:
            assert (stats.index_spec != "Flat" and stats.trained_on >= 300
                    and stats.disk_bytes >= N * 4 * stats.model.dim)
            assert stats.bytes_per_vector < 4 * stats.model.dim + 16 * 8  # below HNSW16,Flat's
        if kind in ("ivf-pq", "IVF4,SQ8"):
            assert stats.nlist > 0 and stats.nprobe == 8

        def search(i: int, flt: types_pb2.Filter | None = None, k: int = 10) -> list[str]:
            reply = search_stub.ImageSearch(search_service_pb2.ImageSearchRequest(id=f"v{i}", k=k, filter=flt),
                                            timeout=10)
            return ids(reply.results)

        queries = [3, 77, 150, 222, 399]
        before = {i: search(i) for i in queries}
        for i in queries:  # the query image itself is excluded; the rest is near-exact
            expected = exact_top(vectors, vectors[i], [j for j in range(N) if j != i], 10)
            assert len(set(before[i]) & set(expected)) >= 8, (i, before[i], expected)
        low = types_pb2.Filter(range=types_pb2.Range(field="n", lt=60))
        for i in queries:  # filters: exactly the matching images, best first
            allowed = [j for j in range(60) if j != i]
            assert search(i, low) == exact_top(vectors, vectors[i], allowed, 10)
        victims = before[queries[0]][:3]
        reply = index_stub.DeleteImages(index_service_pb2.DeleteImagesRequest(ids=victims), timeout=10)
        assert sorted(reply.deleted) == sorted(victims)
        after_delete = search(queries[0])
        assert not set(after_delete) & set(victims) and len(after_delete) == 10
        assert after_delete[:7] == before[queries[0]][3:10]
        spec = current().index_spec

    server.stop()
    server, address = stack.start_server(data, extra=extra)
    procs.append(server)
    with grpc.insecure_channel(address) as channel:
        index_stub = index_service_pb2_grpc.IndexServiceStub(channel)
        search_stub = search_service_pb2_grpc.SearchServiceStub(channel)
        restarted = index_stub.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=10)
        assert restarted.count == N - 3 and restarted.index_spec == spec
        assert search(queries[0]) == after_delete
        survivors = [j for j in range(60) if j != queries[1] and f"v{j}" not in victims]
        assert search(queries[1], low) == exact_top(vectors, vectors[queries[1]], survivors, 10)
    server.stop()
    if kind == "hnsw-sq8":  # the kind is the collection's: another --index refuses to start, saying why
        other = [*extra[:1], "ivf-pq", *extra[2:]]
        port = free_port()
        proc = spawn("refused", _server_cmd(stack, data, port, other), stack.log_dir)
        procs.append(proc)
        proc.popen.wait(timeout=120)
        assert proc.popen.returncode != 0
        assert "created with --index hnsw-sq8; this server runs --index ivf-pq" in proc.output()


def _server_cmd(stack: Stack, data: Path, port: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "clipsearch_server", *stack.common(), "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data), *extra]
