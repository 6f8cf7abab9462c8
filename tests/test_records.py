"""RecordService through real processes: GetRecords and CountRecords on one server and through a router.

One server (SQLite, a tokens file: the reads use a read token) and a sharded cluster (shard 0 with one
replica, shard 1 with two, a router in front; the same tokens) get the same records by UpsertVectors:
random vectors that are not unit length, metadata, typed fields and, for some, a thumbnail. Checks: a
record comes back as written (uri, metadata, fields, model, when) and its vector is the stored unit
vector a search uses (a search with it finds the image with score 1); thumbnails on request; unknown
ids NOT_FOUND or, with allow_missing, listed; the order of the ids; the limits; exact counts with and
without filters against a count done here; the router's merge and sum, and its refusal to give a count
without every shard; the Python client (sync and async), the CLI and the read scope.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest

from clipsearch import AsyncClient, Client, InvalidArgumentError, NotFoundError, Record, UnavailableError
from clipsearch.v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    record_service_pb2 as record_pb,
    record_service_pb2_grpc as record_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)
from clipsearch.where import where_filter
from clipsearch_core.shards import shard_of
from clipsearch_devkit.procs import Proc, Stack, start_router

pytestmark = pytest.mark.timeout(300)

READ_TOKEN = "records-read-token-5d0c6f1e9a"
WRITE_TOKEN = "records-write-token-83b1c2d4e7"
N = 48
SHAPES = ["circle", "square", "triangle", "star"]
COLORS = ["red", "green", "blue"]


def meta(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Written:
    """What the test wrote: per id, the vector sent (not unit length), metadata, fields and thumbnail."""

    vectors: dict[str, np.ndarray]
    metadata: dict[str, dict[str, str]]
    n: dict[str, int]
    shape: dict[str, str]
    thumbnails: dict[str, bytes]

    def ids(self) -> list[str]:
        return list(self.vectors)

    def count(self, keep: Callable[[str], bool]) -> int:
        return sum(1 for i in self.vectors if keep(i))


def records_to_write(dim: int) -> tuple[list[index_pb.VectorRecord], Written]:
    rng = np.random.default_rng(27)
    records, written = [], Written({}, {}, {}, {}, {})
    for i in range(N):
        image_id = f"img-{i:03d}"
        vector = (rng.standard_normal(dim) * 3).astype("<f4")
        metadata = {"color": COLORS[i % 3]}
        thumbnail = f"png-{i}".encode() if i % 3 == 0 else b""
        records.append(index_pb.VectorRecord(
            id=image_id, vector=vector.tobytes(), uri=f"/photos/{image_id}.jpg", metadata=metadata,
            fields={"n": types_pb2.Value(int_value=i), "shape": types_pb2.Value(string_value=SHAPES[i % 4])},
            thumbnail=types_pb2.Thumbnail(data=thumbnail, mime_type="image/png" if thumbnail else "")))
        written.vectors[image_id], written.metadata[image_id] = vector, metadata
        written.n[image_id], written.shape[image_id] = i, SHAPES[i % 4]
        if thumbnail:
            written.thumbnails[image_id] = thumbnail
    return records, written


def upsert(address: str, dim_from: str | None = None) -> tuple[Written, types_pb2.ModelInfo, float]:
    """Writes the records with the write token; returns them, the model and when the write began."""
    with grpc.insecure_channel(dim_from or address) as channel:
        model = index_grpc.IndexServiceStub(channel).GetIndexStats(
            index_pb.GetIndexStatsRequest(), timeout=10, metadata=meta(WRITE_TOKEN)).model
    records, written = records_to_write(model.dim)
    began = time.time()
    with grpc.insecure_channel(address) as channel:
        index_grpc.IndexServiceStub(channel).UpsertVectors(
            index_pb.UpsertVectorsRequest(model=model, records=records), timeout=30, metadata=meta(WRITE_TOKEN))
    return written, model, began


@dataclass
class Deployment:
    single: str
    router: str
    shard0: Proc
    shard_addresses: list[str]
    written: Written
    model: types_pb2.ModelInfo
    began: float

    def client(self, address: str, token: str = READ_TOKEN) -> Client:
        return Client(address, timeout=15, token=token)


@pytest.fixture(scope="module")
def deployment(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("records")
    tokens = tmp / "tokens.txt"
    tokens.write_text(f"{READ_TOKEN} read reader\n{WRITE_TOKEN} write writer\n")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="records")
    auth = ["--tokens-file", str(tokens)]
    started: list[Proc] = []
    try:
        single_proc, single = stack.start_server(tmp / "single", extra=auth)
        started.append(single_proc)
        s0, s0_address = stack.start_server(tmp / "s0", extra=[*auth, "--shard", "0/2"])
        started.append(s0)
        s1 = [stack.start_server(tmp / name, extra=[*auth, "--shard", "1/2"]) for name in ("s1a", "s1b")]
        started.extend(p for p, _ in s1)
        router, router_address = start_router(stack, [s0_address, f"{s1[0][1]},{s1[1][1]}"],
                                              ["--shard-timeout", "1.0", "--health-interval", "0.3"])
        started.append(router)
        written, model, began = upsert(single)
        upsert(router_address, dim_from=single)
        yield Deployment(single, router_address, s0, [s0_address, s1[0][1], s1[1][1]], written, model, began)
    finally:
        for proc in started:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
        for proc in reversed(started):
            proc.stop(timeout=15)


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def check_record(d: Deployment, r: Record, vectors: bool) -> None:
    w = d.written
    assert r.uri == f"/photos/{r.id}.jpg"
    assert r.metadata == w.metadata[r.id]
    assert r.fields == {"n": w.n[r.id], "shape": w.shape[r.id]}  # metadata is not repeated in fields
    assert (r.model, r.dim) == (d.model.name, d.model.dim)
    assert d.began * 1000 - 5000 <= r.updated_at_ms <= time.time() * 1000
    assert r.submitted_at_ms == 0  # written by UpsertVectors without a submission time
    if vectors:
        got = np.frombuffer(r.vector, dtype="<f4")
        assert got.shape == (d.model.dim,)
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
        np.testing.assert_allclose(got, unit(w.vectors[r.id]), atol=1e-6)
        assert r.floats() == pytest.approx(got.tolist())
    else:
        assert r.vector == b""


@pytest.mark.parametrize("where", ["single", "router"])
def test_get_records_as_written_in_the_order_asked(deployment: Deployment, where: str) -> None:
    address = getattr(deployment, where)
    ids = ["img-030", "img-002", "img-041", "img-030", "img-017"]  # both shards; one id twice
    with deployment.client(address) as client:
        plain = client.get_records(ids)
        with_vectors = client.get_records(ids, include_vectors=True)
    assert [r.id for r in plain] == ["img-030", "img-002", "img-041", "img-017"]
    assert {shard_of(i, 2) for i in ids} == {0, 1}
    for r in plain:
        check_record(deployment, r, vectors=False)
        assert r.thumbnail is None
    assert [r.id for r in with_vectors] == [r.id for r in plain]
    for r in with_vectors:
        check_record(deployment, r, vectors=True)


@pytest.mark.parametrize("where", ["single", "router"])
def test_the_vector_is_the_one_searches_use(deployment: Deployment, where: str) -> None:
    address = getattr(deployment, where)
    with deployment.client(address) as client:
        record, = client.get_records(["img-007"], include_vectors=True)
    with grpc.insecure_channel(address) as channel:
        reply = search_grpc.SearchServiceStub(channel).BatchSearch(search_pb.BatchSearchRequest(
            queries=[search_pb.BatchQuery(vector=record.vector, k=1)]), timeout=15, metadata=meta(READ_TOKEN))
    hit, = reply.results[0].results
    assert hit.id == "img-007" and hit.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("where", ["single", "router"])
def test_thumbnails_on_request(deployment: Deployment, where: str) -> None:
    w = deployment.written
    ids = ["img-003", "img-004", "img-045"]  # 3 and 45 have one, 4 has none
    with deployment.client(getattr(deployment, where)) as client:
        found = client.get_records(ids, include_thumbnails=True)
    assert [r.id for r in found] == ids
    got = {r.id: r.thumbnail for r in found}
    assert got["img-004"] is None
    for image_id in ("img-003", "img-045"):
        thumb = got[image_id]
        assert thumb is not None and (thumb.data, thumb.mime_type) == (w.thumbnails[image_id], "image/png")


@pytest.mark.parametrize("where", ["single", "router"])
def test_missing_ids_not_found_unless_allowed(deployment: Deployment, where: str) -> None:
    address = getattr(deployment, where)
    with deployment.client(address) as client:
        with pytest.raises(NotFoundError) as info:
            client.get_records(["img-001", "nope-1", "img-002", "nope-2"])
        assert "'nope-1', 'nope-2'" in info.value.details and "allow_missing" in info.value.details
        assert "img-001" not in info.value.details
    with grpc.insecure_channel(address) as channel:
        reply = record_grpc.RecordServiceStub(channel).GetRecords(record_pb.GetRecordsRequest(
            ids=["nope-1", "img-001", "nope-2", "nope-1", "img-046"], allow_missing=True), timeout=15,
            metadata=meta(READ_TOKEN))
    assert [r.id for r in reply.records] == ["img-001", "img-046"]
    assert list(reply.missing_ids) == ["nope-1", "nope-2"]


@pytest.mark.parametrize("where", ["single", "router"])
def test_limits_are_invalid_argument_naming_the_limit(deployment: Deployment, where: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ids": []}, "no ids"),
        ({"ids": [f"x{i}" for i in range(1001)]}, "1001 ids, the limit is 1000"),
        ({"ids": [f"x{i}" for i in range(101)], "include_thumbnails": True},
         "with include_thumbnails the limit is 100"),
        ({"ids": ["img-001", "bad\x01id"]}, "ids[1]"),
        ({"ids": ["img-001", "x" * 257]}, "ids[1] is 257 characters, the limit is 256"),
        ({"ids": ["img-001"], "min_position": -1}, "min_position must be >= 0"),
    ]
    with grpc.insecure_channel(getattr(deployment, where)) as channel:
        stub = record_grpc.RecordServiceStub(channel)
        for request, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                stub.GetRecords(record_pb.GetRecordsRequest(**request), timeout=15, metadata=meta(READ_TOKEN))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, info.value)
            assert message in (info.value.details() or ""), (message, info.value.details())
        exactly = stub.GetRecords(record_pb.GetRecordsRequest(ids=[f"x{i}" for i in range(1000)], allow_missing=True),
                                  timeout=15, metadata=meta(READ_TOKEN))
        assert len(exactly.missing_ids) == 1000
        with pytest.raises(grpc.RpcError) as info:
            stub.CountRecords(record_pb.CountRecordsRequest(filter=types_pb2.Filter()), timeout=15,
                              metadata=meta(READ_TOKEN))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter" in (info.value.details() or "")
    with deployment.client(getattr(deployment, where)) as client:
        with pytest.raises(InvalidArgumentError, match="not one string"):
            client.get_records("img-001")  # a str is a sequence of 7 one-character ids: refused in the client


COUNTS: list[tuple[list[str], Callable[[Written, str], bool]]] = [
    ([], lambda w, i: True),
    (["shape=circle"], lambda w, i: w.shape[i] == "circle"),
    (["shape in circle,square", "n>=10"], lambda w, i: w.shape[i] in ("circle", "square") and w.n[i] >= 10),
    (["color=red"], lambda w, i: w.metadata[i]["color"] == "red"),  # metadata entries are string fields
    (["color!=red", "n<40"], lambda w, i: w.metadata[i]["color"] != "red" and w.n[i] < 40),
    (["shape=hexagon"], lambda w, i: False),
]


@pytest.mark.parametrize("where", ["single", "router"])
def test_counts_are_exact(deployment: Deployment, where: str) -> None:
    w = deployment.written
    with deployment.client(getattr(deployment, where)) as client:
        for expressions, keep in COUNTS:
            expected = w.count(lambda i: keep(w, i))
            assert client.count(where_filter(expressions)) == expected, expressions
    assert sum(1 for i in w.ids() if w.shape[i] == "circle") == N // 4  # the brute force itself is sane


def test_router_count_is_the_sum_over_the_shards(deployment: Deployment) -> None:
    flt = where_filter(["shape=star"])
    parts = []
    for address in deployment.shard_addresses:
        with deployment.client(address) as client:
            parts.append((client.count(), client.count(flt)))
    s0, s1a, s1b = parts
    assert s1a == s1b  # replicas of shard 1 hold the same
    assert s0[0] + s1a[0] == N and s0[0] > 0 and s1a[0] > 0
    with deployment.client(deployment.router) as client:
        assert client.count() == N
        assert client.count(flt) == s0[1] + s1a[1] == N // 4


def test_router_refuses_a_count_without_every_shard(deployment: Deployment) -> None:
    proc = deployment.shard0
    proc.popen.send_signal(signal.SIGSTOP)
    try:
        with deployment.client(deployment.router) as client:
            with pytest.raises(UnavailableError) as info:
                client.count(timeout=10)
            assert "shard 0" in info.value.details and "exact" in info.value.details
            with pytest.raises(UnavailableError) as got:  # an id of shard 0: no partial answer either
                client.get_records([i for i in deployment.written.ids() if shard_of(i, 2) == 0][:1], timeout=10)
            assert "shard 0" in got.value.details
            shard1_ids = [i for i in deployment.written.ids() if shard_of(i, 2) == 1][:3]
            assert [r.id for r in client.get_records(shard1_ids, timeout=10)] == shard1_ids  # other shards answer
    finally:
        proc.popen.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 20
    with deployment.client(deployment.router) as client:
        while True:
            try:
                assert client.count(timeout=5) == N
                break
            except UnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def test_deleted_records_are_gone_and_not_counted(deployment: Deployment, tmp_path: Path) -> None:
    with grpc.insecure_channel(deployment.single) as channel:
        index_grpc.IndexServiceStub(channel).DeleteImages(index_pb.DeleteImagesRequest(ids=["img-047"]), timeout=15,
                                                          metadata=meta(WRITE_TOKEN))
    try:
        with deployment.client(deployment.single) as client:
            assert client.count() == N - 1
            assert client.count(where_filter(["n>=47"])) == 0
            with pytest.raises(NotFoundError):
                client.get_records(["img-047"])
    finally:
        upsert(deployment.single)  # restore it for the other tests
    with deployment.client(deployment.single) as client:
        assert client.count() == N


def test_async_client(deployment: Deployment) -> None:
    async def run() -> tuple[list[Record], int, int]:
        async with AsyncClient(deployment.router, timeout=15, token=READ_TOKEN) as client:
            records = await client.get_records(["img-010", "img-011"], include_vectors=True)
            return records, await client.count(), await client.count(where_filter(["shape=square"]))

    records, total, squares = asyncio.run(run())
    assert [r.id for r in records] == ["img-010", "img-011"]
    for r in records:
        check_record(deployment, r, vectors=True)
    assert (total, squares) == (N, N // 4)


def test_a_read_token_suffices_and_no_token_does_not(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.single) as channel:
        stub = record_grpc.RecordServiceStub(channel)
        assert stub.CountRecords(record_pb.CountRecordsRequest(), timeout=15, metadata=meta(READ_TOKEN)).count == N
        assert len(stub.GetRecords(record_pb.GetRecordsRequest(ids=["img-001"]), timeout=15,
                                   metadata=meta(READ_TOKEN)).records) == 1
        for call in (lambda: stub.CountRecords(record_pb.CountRecordsRequest(), timeout=15),
                     lambda: stub.GetRecords(record_pb.GetRecordsRequest(ids=["img-001"]), timeout=15)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def cli(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIPSEARCH_SERVER": server, "CLIPSEARCH_AUTH_TOKEN": READ_TOKEN}
    return subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_cli_get_and_count(deployment: Deployment) -> None:
    w, router = deployment.written, deployment.router
    got = cli("get", "img-005", "nope", "img-004", "--json", server=router)
    assert got.returncode == 1, got.stderr  # an id is missing
    data = json.loads(got.stdout)
    assert [r["id"] for r in data["records"]] == ["img-005", "img-004"] and data["missing_ids"] == ["nope"]
    first = data["records"][0]
    assert first["metadata"] == w.metadata["img-005"] and first["fields"] == {"n": 5, "shape": "square"}
    assert first["model"] == deployment.model.name and "vector" not in first

    vectors = cli("get", "img-005", "--vectors", "--json", server=router)
    assert vectors.returncode == 0, vectors.stderr
    np.testing.assert_allclose(json.loads(vectors.stdout)["records"][0]["vector"], unit(w.vectors["img-005"]),
                               atol=1e-6)

    text = cli("get", "img-005", server=router)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("img-005\n") and "uri: /photos/img-005.jpg" in text.stdout
    assert f"model: {deployment.model.name}" in text.stdout and '"shape": "square"' in text.stdout

    count = cli("count", server=router)
    assert (count.returncode, count.stdout) == (0, f"{N}\n"), count.stderr
    circles = cli("count", "--where", "shape=circle", "--where", "n<24", server=router)
    assert circles.stdout == f"{w.count(lambda i: w.shape[i] == 'circle' and w.n[i] < 24)}\n", circles.stderr
    as_json = cli("count", "--where", "shape=circle", "--json", server=deployment.single)
    assert json.loads(as_json.stdout) == {"count": N // 4}, as_json.stderr
    bad = cli("count", "--where", "shape", server=router)
    assert bad.returncode == 2 and "--where" in bad.stderr
