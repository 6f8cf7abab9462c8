"""Shards behind a router, with real processes on loopback ports: two shards (shard 0 with one replica,
shard 1 with two, each with its own SQLite store), a router in front, a real encoder worker pushing to
the router, and a single unsharded server holding the same vectors as the reference.

Checks: the router's merge is exact (same ids and scores as the single server); writes land only in the
owning shard (and in every replica of it); a SIGSTOPped shard gives partial results within the deadline,
or UNAVAILABLE when partial results are forbidden, and whole results after SIGCONT; a killed replica is
skipped; the caller's bearer token reaches the servers (TLS on both hops). The shard bookkeeping of the
collection (count recorded, misrouted writes refused) is checked on a Collection and on a server process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from clipsearch import Client
from clipsearch.v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)
from clipsearch_core.shards import ShardSpec, shard_of
from clipsearch_devkit.data import resolver_answers, submit_all, synthetic_inputs, wait_until
from clipsearch_devkit.procs import REPO, Proc, Stack, channel_for, free_port, start_router, wait_for
from tests.certs import make_certs

pytestmark = pytest.mark.timeout(400)

SHARD_TIMEOUT = 1.0
QUERIES = ["a red circle", "a blue square", "green triangle", "yellow star"]


@dataclass
class Cluster:
    router: str
    shard0: tuple[Proc, str]
    shard1: list[tuple[Proc, str]]
    single: str
    data: dict[str, Path]
    ids: list[str]
    metrics_port: int

    def search(self, address: str, text: str, k: int = 10, timeout: float = 10,
               **kw: object) -> search_pb.TextSearchResponse:
        with grpc.insecure_channel(address) as channel:
            return search_grpc.SearchServiceStub(channel).TextSearch(
                search_pb.TextSearchRequest(text=text, k=k, **kw), timeout=timeout)  # type: ignore[arg-type]

    def metric(self, line_start: str) -> float:
        """The value of the router's Prometheus sample whose line starts with `line_start` (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)), 0.0)

    def stats(self, address: str) -> index_pb.GetIndexStatsResponse:
        with grpc.insecure_channel(address) as channel:
            return index_grpc.IndexServiceStub(channel).GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=10)


def _stored(data_dir: Path) -> list[index_pb.VectorRecord]:
    """Every image a server's SQLite store holds, as the records a worker would push."""
    with sqlite3.connect(data_dir / "images.sqlite3") as conn:
        rows = conn.execute("SELECT id, uri, metadata, vector FROM images").fetchall()
    return [index_pb.VectorRecord(id=i, uri=u, metadata=json.loads(m), vector=v) for i, u, m, v in rows]


@pytest.fixture(scope="module")
def cluster(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("router")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="router")
    started: list[Proc] = []
    try:
        data = {name: tmp / name for name in ("s0", "s1a", "s1b", "single")}
        # loopback URLs allowed: a closed port is a URL that fails transiently (UNAVAILABLE)
        s0 = stack.start_server(data["s0"], extra=["--shard", "0/2", "--allow-network", "127.0.0.1/32"])
        started.append(s0[0])
        s1 = [stack.start_server(data[name], extra=["--shard", "1/2", "--allow-network", "127.0.0.1/32"])
              for name in ("s1a", "s1b")]
        started.extend(p for p, _ in s1)
        metrics_port = free_port()
        router, address = start_router(stack, [s0[1], f"{s1[0][1]},{s1[1][1]}"],
                                       ["--shard-timeout", str(SHARD_TIMEOUT), "--health-interval", "0.3",
                                        "--metrics-port", str(metrics_port)])
        started.append(router)
        worker = stack.start_worker(address, ["--batch-size", "16"])
        started.append(worker)
        inputs = synthetic_inputs(per_class=3, seed=11)  # 72 images
        with Client(address, timeout=30) as client:
            wait_until(client, submit_all(client, inputs), 240)
        single_proc, single = stack.start_server(data["single"], extra=["--redis-prefix", "router-single"])
        started.append(single_proc)
        with grpc.insecure_channel(single) as channel:  # the same vectors, in one unsharded server
            stats = index_grpc.IndexServiceStub(channel).GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=10)
            records = _stored(data["s0"]) + _stored(data["s1a"])
            index_grpc.IndexServiceStub(channel).UpsertVectors(
                index_pb.UpsertVectorsRequest(model=stats.model, records=records), timeout=30)
        yield Cluster(address, s0, s1, single, data, [i.id for i in inputs], metrics_port)
    finally:
        for proc in started:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
        for proc in reversed(started):
            proc.stop(timeout=15)


def test_each_image_lands_in_its_shard_and_every_replica(cluster: Cluster) -> None:
    held = {name: {r.id for r in _stored(cluster.data[name])} for name in ("s0", "s1a", "s1b")}
    assert held["s0"] | held["s1a"] == set(cluster.ids)
    assert held["s0"] and held["s1a"] and not held["s0"] & held["s1a"]
    assert all(shard_of(i, 2) == 0 for i in held["s0"]) and all(shard_of(i, 2) == 1 for i in held["s1a"])
    assert held["s1a"] == held["s1b"]  # replica_writes=all: both replicas got every write
    stats = cluster.stats(cluster.router)
    assert (stats.count, stats.shard_count, stats.shards_answered) == (len(cluster.ids), 2, 2)
    direct = cluster.stats(cluster.shard1[0][1])
    assert (direct.count, direct.shard_index, direct.shard_count, direct.shards_answered) == (len(held["s1a"]), 1, 2, 0)


def _pairs(reply: search_pb.TextSearchResponse | search_pb.ImageSearchResponse) -> list[tuple[str, float]]:
    return [(r.id, r.score) for r in reply.results]


def _same(routed: list[tuple[str, float]], single: list[tuple[str, float]]) -> None:
    assert [i for i, _ in routed] == [i for i, _ in single]
    assert np.allclose([s for _, s in routed], [s for _, s in single], atol=1e-6)


@pytest.mark.parametrize("k", [1, 7, 30, 200])
def test_router_merge_equals_a_single_server(cluster: Cluster, k: int) -> None:
    for text in QUERIES:
        routed = cluster.search(cluster.router, text, k)
        assert (routed.shards_total, routed.shards_answered, routed.partial) == (2, 2, False)
        _same(_pairs(routed), _pairs(cluster.search(cluster.single, text, k)))
        assert len(routed.results) == min(k, len(cluster.ids))


def test_filters_thresholds_and_image_queries_merge_exactly(cluster: Cluster) -> None:
    red = types_pb2.Filter(match=types_pb2.Match(field="color", any_of=types_pb2.StringList(values=["red"])))
    for kw in ({"filter": red}, {"min_score": 0.2}, {"filter": red, "min_score": 0.1}):
        routed = cluster.search(cluster.router, "a circle", 20, **kw)
        _same(_pairs(routed), _pairs(cluster.search(cluster.single, "a circle", 20, **kw)))
        assert routed.results
    query = synthetic_inputs(per_class=1, seed=99)[0].image
    replies = []
    for address in (cluster.router, cluster.single):
        with grpc.insecure_channel(address) as channel:
            replies.append(search_grpc.SearchServiceStub(channel).ImageSearch(
                search_pb.ImageSearchRequest(image=query, k=15), timeout=20))
    _same(_pairs(replies[0]), _pairs(replies[1]))


def _all_pages(cluster: Cluster, address: str, text: str, k: int, **kw: object) -> tuple[list[tuple[str, float]], int]:
    """Every result of a query, page after page of size k (bounded), and the number of pages."""
    found: list[tuple[str, float]] = []
    token, count = "", 0
    for count in range(1, 100):  # noqa: B007 -- `count` (pages read) is returned after the loop
        reply = cluster.search(address, text, k, page_token=token, **kw)
        found += _pairs(reply)
        token = reply.next_page_token
        if not token:
            break
    return found, count


def test_pages_through_the_router_equal_a_single_servers_order(cluster: Cluster) -> None:
    for text in QUERIES[:2]:
        routed, pages_routed = _all_pages(cluster, cluster.router, text, 7)
        single, _ = _all_pages(cluster, cluster.single, text, 7)
        assert len({i for i, _ in routed}) == len(routed) == len(cluster.ids)  # no image twice, none skipped
        _same(routed, single)
        assert pages_routed == -(-len(cluster.ids) // 7)
    red = types_pb2.Filter(match=types_pb2.Match(field="color", any_of=types_pb2.StringList(values=["red"])))
    routed, _ = _all_pages(cluster, cluster.router, "a circle", 5, filter=red, min_score=0.0)
    single, _ = _all_pages(cluster, cluster.single, "a circle", 5, filter=red, min_score=0.0)
    assert routed and len({i for i, _ in routed}) == len(routed)
    _same(routed, single)
    first = cluster.search(cluster.router, "a circle", 5)
    with pytest.raises(grpc.RpcError) as err:  # a token of another query is refused
        cluster.search(cluster.router, "a square", 5, page_token=first.next_page_token)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "another query" in (err.value.details() or "")


def test_batch_search_through_the_router_merges_each_query(cluster: Cluster) -> None:
    request = search_pb.BatchSearchRequest(queries=[search_pb.BatchQuery(text=text, k=9) for text in QUERIES])
    replies = []
    for address in (cluster.router, cluster.single):
        with grpc.insecure_channel(address) as channel:
            replies.append(search_grpc.SearchServiceStub(channel).BatchSearch(request, timeout=20))
    routed, single = replies
    assert (routed.shards_total, routed.shards_answered, routed.partial) == (2, 2, False)
    assert len(routed.results) == len(QUERIES)
    for a, b in zip(routed.results, single.results):
        _same(_pairs(a), _pairs(b))
        assert bool(a.next_page_token) == bool(b.next_page_token)
    by_id = search_pb.BatchSearchRequest(queries=[search_pb.BatchQuery(id=cluster.ids[0], k=3)])
    with grpc.insecure_channel(cluster.router) as channel, pytest.raises(grpc.RpcError) as err:
        search_grpc.SearchServiceStub(channel).BatchSearch(by_id, timeout=20)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_search_by_id_asks_the_owning_shard_only(cluster: Cluster) -> None:
    image_id = cluster.ids[0]
    with grpc.insecure_channel(cluster.router) as channel:
        stub = search_grpc.SearchServiceStub(channel)
        reply = stub.ImageSearch(search_pb.ImageSearchRequest(id=image_id, k=5), timeout=10)
        assert (reply.shards_total, reply.shards_answered, reply.partial) == (2, 1, True)
        assert all(shard_of(r.id, 2) == shard_of(image_id, 2) and r.id != image_id for r in reply.results)
        with pytest.raises(grpc.RpcError) as err:
            stub.ImageSearch(search_pb.ImageSearchRequest(id=image_id, k=5, forbid_partial=True), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:  # a server's validation error comes back as it was
            stub.TextSearch(search_pb.TextSearchRequest(text="   ", k=5), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text" in (err.value.details() or "")


def test_a_misrouted_write_is_refused_by_the_shard(cluster: Cluster) -> None:
    foreign = next(f"x{n}" for n in range(100) if shard_of(f"x{n}", 2) == 1)
    stats = cluster.stats(cluster.shard0[1])
    record = index_pb.VectorRecord(id=foreign, vector=np.ones(stats.model.dim, "<f4").tobytes())
    with grpc.insecure_channel(cluster.shard0[1]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            index_grpc.IndexServiceStub(channel).UpsertVectors(
                index_pb.UpsertVectorsRequest(model=stats.model, records=[record]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shard 0/2" in (err.value.details() or "") and foreign in (err.value.details() or "")
    assert foreign not in {r.id for r in _stored(cluster.data["s0"])}


def test_the_cli_json_carries_the_shard_counts(cluster: Cluster) -> None:
    out = subprocess.run([sys.executable, "-m", "clipsearch", "search", "a red circle", "-k", "3", "--json",
                          "--server", cluster.router], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["shards_total"], data["shards_answered"], data["partial"]) == (2, 2, False)
    assert [r["id"] for r in data["results"]] == [
        i for i, _ in _pairs(cluster.search(cluster.single, "a red circle", 3))]


def test_thumbnails_through_the_router(cluster: Cluster) -> None:
    """GetThumbnails asks each id's shard and answers in request order, NOT_FOUND as a server does;
    searches pass include_thumbnails on. The worker made the thumbnails (on by default)."""
    picked = [next(i for i in reversed(cluster.ids) if shard_of(i, 2) == s) for s in (1, 0)]
    with grpc.insecure_channel(cluster.router) as channel:
        stub = search_grpc.SearchServiceStub(channel)
        got = stub.GetThumbnails(search_pb.GetThumbnailsRequest(ids=[*picked, picked[0]]), timeout=10)
        assert [t.id for t in got.thumbnails] == [*picked, picked[0]]
        for image_id, owner in zip(picked, (cluster.shard1[0][1], cluster.shard0[1])):
            with grpc.insecure_channel(owner) as direct:
                own = search_grpc.SearchServiceStub(direct).GetThumbnails(
                    search_pb.GetThumbnailsRequest(ids=[image_id]), timeout=10).thumbnails[0].thumbnail
            assert own.data and {t.id: t.thumbnail for t in got.thumbnails}[image_id] == own
        with pytest.raises(grpc.RpcError) as err:
            stub.GetThumbnails(search_pb.GetThumbnailsRequest(ids=[picked[0], "never-indexed"]), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'never-indexed'" in (err.value.details() or "")
        some = stub.GetThumbnails(search_pb.GetThumbnailsRequest(ids=["never-indexed", picked[1]], allow_missing=True),
                                  timeout=10)
        assert [t.id for t in some.thumbnails] == [picked[1]] and list(some.not_found) == ["never-indexed"]
        for request in (search_pb.GetThumbnailsRequest(), search_pb.GetThumbnailsRequest(ids=["x"] * 101)):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetThumbnails(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    inline = cluster.search(cluster.router, "a red circle", 10, include_thumbnails=True)
    assert [r.id for r in inline.results] == [r.id for r in cluster.search(cluster.router, "a red circle", 10).results]
    assert all(r.thumbnail and r.thumbnail_mime_type == "image/webp" for r in inline.results)
    stats = cluster.stats(cluster.router)
    assert (stats.store_kind, stats.applied_position, stats.lag_ms) == ("sqlite", 0, 0)


def test_deletes_go_to_the_owning_shards(cluster: Cluster) -> None:
    victims = [next(i for i in cluster.ids if shard_of(i, 2) == s) for s in (0, 1)]
    with grpc.insecure_channel(cluster.router) as channel:
        reply = index_grpc.IndexServiceStub(channel).DeleteImages(
            index_pb.DeleteImagesRequest(ids=[*victims, "never-indexed"]), timeout=10)
    assert list(reply.deleted) == victims and list(reply.not_found) == ["never-indexed"]
    for name in ("s0", "s1a", "s1b"):
        assert not set(victims) & {r.id for r in _stored(cluster.data[name])}
    assert cluster.stats(cluster.router).count == len(cluster.ids) - 2
    with grpc.insecure_channel(cluster.single) as channel:  # the reference follows
        index_grpc.IndexServiceStub(channel).DeleteImages(index_pb.DeleteImagesRequest(ids=victims), timeout=10)


def test_a_stopped_shard_gives_partial_results_or_unavailable(cluster: Cluster) -> None:
    partial_before = cluster.metric('clipsearch_router_partial_total{shard="1"}')
    stopped = [proc.popen for proc, _ in cluster.shard1]  # both replicas of shard 1
    for proc in stopped:
        proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = cluster.search(cluster.router, "a red circle", 10)
        assert time.monotonic() - started < SHARD_TIMEOUT + 2
        assert (reply.shards_total, reply.shards_answered, reply.partial) == (2, 1, True)
        assert reply.results and all(shard_of(r.id, 2) == 0 for r in reply.results)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            cluster.search(cluster.router, "a red circle", 10, forbid_partial=True)
        assert time.monotonic() - started < SHARD_TIMEOUT + 2
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shard 1" in (err.value.details() or "")
        assert cluster.metric('clipsearch_router_partial_total{shard="1"}') == partial_before + 1
        wait_for(lambda: cluster.metric("clipsearch_router_shards_reachable") == 1, 10, "health gauge")
    finally:
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)
    wait_for(lambda: not cluster.search(cluster.router, "a red circle", 10).partial, 15, "whole results again")
    whole = cluster.search(cluster.router, "a red circle", 10, forbid_partial=True)
    _same(_pairs(whole), _pairs(cluster.search(cluster.single, "a red circle", 10)))


def test_a_killed_replica_is_skipped(cluster: Cluster) -> None:
    cluster.shard1[0][0].kill()
    expected = _pairs(cluster.search(cluster.single, "a blue square", 10))
    for _ in range(6):  # round robin would pick the dead replica every other call: failover answers
        reply = cluster.search(cluster.router, "a blue square", 10, forbid_partial=True)
        assert (reply.shards_answered, reply.partial) == (2, False)
        _same(_pairs(reply), expected)


def test_the_collection_records_its_shard_count(tmp_path: Path) -> None:
    from clipsearch_server.api.errors import FailedPrecondition
    from clipsearch_server.collection.collection import Collection
    from clipsearch_server.storage.records import ImageRecord

    first = Collection(tmp_path, "m", 4, shard=ShardSpec(1, 3))
    mine = next(f"i{n}" for n in range(100) if shard_of(f"i{n}", 3) == 1)
    other = next(f"i{n}" for n in range(100) if shard_of(f"i{n}", 3) == 2)
    vector = np.ones(4, np.float32)
    assert first.upsert([ImageRecord(mine, vector)]) == 1
    with pytest.raises(FailedPrecondition, match=r"shard 1/3.*'i\d+'"):
        first.upsert([ImageRecord(mine, vector), ImageRecord(other, vector)])
    assert first.stats().count == 1  # the whole write was refused
    first.close()
    with pytest.raises(FailedPrecondition, match="created with 3 shard"):
        Collection(tmp_path, "m", 4, shard=ShardSpec(0, 2))
    Collection(tmp_path, "m", 4, shard=ShardSpec(2, 3)).close()  # same N, another index: the store is shared in PG


def test_the_router_validates_writes_itself(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.router) as channel:
        stub = index_grpc.IndexServiceStub(channel)
        for request in (index_pb.UpsertVectorsRequest(), index_pb.DeleteImagesRequest(ids=[""])):
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, type(request).__name__.removesuffix("Request"))(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_router_forwards_the_bearer_token_over_tls(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    stack.extra_env["CLIPSEARCH_AUTH_TOKEN"] = "s3cret-token"
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    server, address = stack.start_server(tmp_path / "data", extra=tls, tls_ca=certs.ca)
    procs.append(server)
    router, routed = start_router(stack, [address], [*tls, "--tls-ca", str(certs.ca)], tls_ca=certs.ca)
    procs.append(router)  # the router itself has no token: it passes on the caller's
    with channel_for(routed, certs.ca) as channel:
        stub = search_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.TextSearch(search_pb.TextSearchRequest(text="a red circle", k=3), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.TextSearch(search_pb.TextSearchRequest(text="a red circle", k=3), timeout=10,
                                metadata=(("authorization", "Bearer s3cret-token"),))
        assert (reply.shards_total, reply.shards_answered, reply.partial) == (1, 1, False)


def test_a_call_moves_on_to_the_next_replica_on_unavailable(cluster: Cluster) -> None:
    from clipsearch_router.cluster import Shard, ShardDown, ShardReplica as Replica, Upstream

    async def run() -> None:
        dead, live = Replica(f"127.0.0.1:{free_port()}", Upstream()), Replica(cluster.single, Upstream())
        shard = Shard(0, [dead, live])  # round robin starts at the dead one
        payload = search_pb.TextSearchRequest(text="a red circle", k=3).SerializeToString()
        path = "/clipsearch.v1.SearchService/TextSearch"
        reply = search_pb.TextSearchResponse.FromString(await shard.call(path, payload, 10, ()))
        assert len(reply.results) == 3 and dead.healthy is False and live.healthy is None
        live.mark(False)
        started = time.monotonic()
        with pytest.raises(ShardDown, match="no healthy replica"):  # known down: no waiting for the deadline
            await shard.call(path, payload, 10, ())
        assert time.monotonic() - started < 0.5
        await asyncio.gather(dead.channel.close(), live.channel.close())

    asyncio.run(run())


def test_a_server_refuses_another_shard_count_at_restart(cluster: Cluster, tiny_model: str) -> None:
    # The collection in s0's data dir was created as shard 0/2; nothing is written before the refusal.
    cmd = [sys.executable, "-m", "clipsearch_server", "--model", tiny_model, "--device", "cpu", "--threads", "1",
           "--host", "127.0.0.1", "--port", str(free_port()), "--data-dir", str(cluster.data["s0"]), "--shard", "0/3"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 2
    assert "created with 2 shard(s)" in out.stderr and "--shard I/2" in out.stderr


@pytest.mark.parametrize("uri,code", [
    ("http://127.0.0.1:9/cat.jpg", grpc.StatusCode.UNAVAILABLE),  # connection refused: may pass later
    ("http://no-such-host.invalid/cat.jpg",  # NXDOMAIN: will not pass (without a resolver: may)
     grpc.StatusCode.INVALID_ARGUMENT if resolver_answers() else grpc.StatusCode.UNAVAILABLE),
])
def test_a_bad_image_url_does_not_take_the_replicas_out(cluster: Cluster, uri: str, code: grpc.StatusCode) -> None:
    with grpc.insecure_channel(cluster.router) as channel:
        with pytest.raises(grpc.RpcError) as err:  # the URL's fault, reported by every replica
            search_grpc.SearchServiceStub(channel).ImageSearch(search_pb.ImageSearchRequest(uri=uri, k=3), timeout=10)
    assert err.value.code() == code, err.value.details()
    reply = cluster.search(cluster.router, "a red circle", 5)  # at once: before the next health check
    assert (reply.shards_answered, reply.partial) == (2, False)


def test_collapse_over_several_shards_is_refused(cluster: Cluster) -> None:
    with pytest.raises(grpc.RpcError) as err:
        cluster.search(cluster.router, "a red circle", 5, collapse_threshold=0.95)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_collapsed_pages_through_a_one_shard_router_list_each_image_once(stack: Stack, procs: list[Proc],
                                                                        tmp_path: Path) -> None:
    """Through a router over one shard, collapse works, and the router hands on the shard's page token:
    the next page starts after the near duplicates folded into the last result, as on the server itself
    (the router used to make its own token from the last result, and those images came back as results)."""
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    router, routed = start_router(stack, [address])
    procs.append(router)
    with grpc.insecure_channel(address) as channel:
        index = index_grpc.IndexServiceStub(channel)
        model = index.GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=10).model
        rng = np.random.default_rng(5)
        base = rng.standard_normal((12, model.dim)).astype(np.float32)
        ids = [f"g{g}-{j}" for g in range(12) for j in range(3)]
        vectors = [base[g] + 0.01 * rng.standard_normal(model.dim).astype(np.float32)
                   for g in range(12) for _ in range(3)]
        index.UpsertVectors(index_pb.UpsertVectorsRequest(model=model, records=[
            index_pb.VectorRecord(id=i, vector=v.astype("<f4").tobytes()) for i, v in zip(ids, vectors)]), timeout=30)
    query = (base[0] + 0.3 * base[1] + 0.2 * base[2]).astype("<f4").tobytes()
    with grpc.insecure_channel(routed) as channel:
        search = search_grpc.SearchServiceStub(channel)
        listed: list[str] = []
        token = ""
        for _ in range(40):
            reply = search.BatchSearch(search_pb.BatchSearchRequest(queries=[search_pb.BatchQuery(
                vector=query, k=2, collapse_threshold=0.99, page_token=token)]), timeout=10).results[0]
            listed += [i for r in reply.results for i in (r.id, *r.collapsed_ids)]
            token = reply.next_page_token
            if not token:
                break
    assert sorted(listed) == sorted(ids), listed
