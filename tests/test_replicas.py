"""Replicas on a shared PostgreSQL store (issue 11, store half), with real parts: a PostgreSQL cluster
of our own (clipsearch_devkit.pg), real server processes on loopback ports, writes through gRPC.

- two replicas written through both while both search converge to identical answers; a token from
  one finds the image on the other; a replica that cannot apply turns NOT_SERVING and back; a third
  replica on an empty disk boots from the shared snapshot;
- a replica killed with kill -9 during ingestion restarts, catches up and answers identically, with
  count == distinct ids;
- rows committed out of order by two writers are not skipped by the tailing;
- a server with other settings than the collection's refuses to start;
- each shard's replica holds exactly its shard; writes while the store is down are UNAVAILABLE;
- snapshots shared through a directory or S3 (moto's server) boot another replica;
- with two replicas and a router on one store (module fixture `pair`): thumbnails travel with their
  image to the other replica (replaced and deleted with it); the Python client reads its writes on the
  other replica with `min_position` and gets the delete's position; the router detects the shared
  store and writes once, returns the position, and passes the store fields of GetIndexStats on; a
  search with an unreachable min_position takes no replica out of the router's rotation;
- two shards of one store behind a router: a split write's position covers both parts.
"""

from __future__ import annotations

import asyncio
import io
import signal
import sqlite3
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from clipsearch import AsyncClient, Client, NotFoundError, UnavailableError
from clipsearch.v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)
from clipsearch_core.errors import FailedPrecondition, Unavailable
from clipsearch_core.shards import ShardSpec, shard_of
from clipsearch_devkit.pg import PgCluster, find_bin_dir, start_cluster
from clipsearch_devkit.procs import Proc, Stack, free_port, health_serving, spawn, start_router, wait_for
from clipsearch_server.collection.collection import Collection
from clipsearch_server.index.kinds import KindOptions
from clipsearch_server.index.snapshot_share import share_for
from clipsearch_server.replication.follower import StoreFollower as Replica
from clipsearch_server.storage.postgres import PgStore
from clipsearch_server.storage.sqlite import DELETION_MEMORY_MS, ImageRecord, SqliteStore as Store

pytestmark = pytest.mark.timeout(240)

QUERIES = ["a red circle", "a blue square", "green triangle", "yellow", "a photo"]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    if find_bin_dir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    cluster = start_cluster()
    yield cluster
    cluster.stop()


class Replica_:
    """A server process of the test and gRPC stubs to it."""

    def __init__(self, proc: Proc, address: str) -> None:
        self.proc, self.address = proc, address
        self.channel = grpc.insecure_channel(address)
        self.index = index_grpc.IndexServiceStub(self.channel)
        self.search = search_grpc.SearchServiceStub(self.channel)

    def stats(self) -> index_pb.GetIndexStatsResponse:
        return self.index.GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=10)

    def upsert(self, ids: list[str], vectors: np.ndarray, thumbnails: dict[str, bytes] | None = None) -> int:
        """Upserts through this server (with the given WebP thumbnails); returns the write's position."""
        s = self.stats()
        reply = self.index.UpsertVectors(index_pb.UpsertVectorsRequest(
            model=s.model, records=[index_pb.VectorRecord(
                id=i, vector=v.astype(np.float32).tobytes(), uri=f"/x/{i}.png", metadata={"n": i},
                thumbnail=types_pb2.Thumbnail(data=(thumbnails or {})[i], mime_type="image/webp")
                if i in (thumbnails or {}) else None) for i, v in zip(ids, vectors)]), timeout=30)
        assert reply.upserted == len(ids)
        return reply.position

    def thumbnails(self, ids: list[str], allow_missing: bool = False) -> search_pb.GetThumbnailsResponse:
        return self.search.GetThumbnails(search_pb.GetThumbnailsRequest(ids=ids, allow_missing=allow_missing),
                                         timeout=10)

    def answers(self) -> list[list[tuple[str, float]]]:
        return [[(r.id, round(r.score, 5)) for r in self.search.TextSearch(
            search_pb.TextSearchRequest(text=q, k=20), timeout=10).results] for q in QUERIES]

    def caught_up(self) -> bool:
        s = self.stats()
        return s.applied_position == s.store_position


def start(stack: Stack, procs: list[Proc], data_dir: Path, url: str, extra: list[str] | None = None) -> Replica_:
    """A server on the shared store. efSearch 512 makes HNSW search exact on these few images, so that a
    graph built at once (after a restart) and one built insert by insert give the same answers."""
    proc, address = stack.start_server(data_dir, extra=["--store", url, "--ef-search", "512", "--grace", "1",
                                                        *(extra or [])])
    procs.append(proc)
    return Replica_(proc, address)


def settle(replicas: list[Replica_], head: int) -> None:
    for r in replicas:
        wait_for(lambda: r.stats().applied_position >= head, 20, f"{r.address} catching up to {head}")


def test_replicas_converge(pg: PgCluster, stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    url = pg.create_database()
    shared = tmp_path / "snapshots"
    a = start(stack, procs, tmp_path / "a", url, ["--shared-snapshots", str(shared), "--snapshot-interval", "1"])
    metrics_port = free_port()
    b = start(stack, procs, tmp_path / "b", url, ["--read-wait", "1", "--max-lag", "0.5",
                                                  "--metrics-port", str(metrics_port)])
    dim = a.stats().model.dim
    assert a.stats().store_kind == "postgresql" and (a.stats().shard_index, a.stats().shard_count) == (0, 1)
    vectors = np.random.default_rng(1).standard_normal((400, dim)).astype(np.float32)
    errors: list[BaseException] = []
    heads: list[int] = []
    stop_searching = threading.Event()

    def write(server: Replica_, offset: int) -> None:
        try:
            for start_ in range(offset, offset + 200, 20):
                heads.append(server.upsert([f"img-{i}" for i in range(start_, start_ + 20)],
                                           vectors[start_:start_ + 20]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def search() -> None:
        while not stop_searching.is_set():
            for server in (a, b):
                try:
                    server.search.TextSearch(search_pb.TextSearchRequest(text=QUERIES[0], k=10), timeout=10)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
            time.sleep(0.02)

    threads = [threading.Thread(target=write, args=(a, 0)), threading.Thread(target=write, args=(b, 200)),
               threading.Thread(target=search)]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(timeout=120)
    stop_searching.set()
    threads[2].join(timeout=60)
    assert not errors, errors
    # overwrite 10 through A (new vectors), delete 20 through B
    heads.append(a.upsert([f"img-{i}" for i in range(10)], vectors[200:210]))
    deleted = b.index.DeleteImages(index_pb.DeleteImagesRequest(ids=[f"img-{i}" for i in range(300, 320)]), timeout=10)
    assert len(deleted.deleted) == 20 and deleted.position > max(heads)
    settle([a, b], deleted.position)
    assert a.stats().count == b.stats().count == 380
    assert a.answers() == b.answers()
    assert all(len(answer) == 20 for answer in a.answers())
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "clipsearch_replica_lag_seconds 0.0" in scraped
    assert f"clipsearch_replica_applied_position {float(b.stats().applied_position)}" in scraped

    # read-your-writes: written through A, searched on B with the token
    token = a.upsert(["fresh"], vectors[399:400] * -1)
    found = b.search.ImageSearch(search_pb.ImageSearchRequest(id="fresh", k=3, min_position=token), timeout=10)
    assert len(found.results) == 3
    with pytest.raises(grpc.RpcError) as err:  # a position nobody wrote yet: UNAVAILABLE after --read-wait
        b.search.TextSearch(search_pb.TextSearchRequest(text="x", k=1, min_position=token + 1000), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "position" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        b.search.TextSearch(search_pb.TextSearchRequest(text="x", k=1, min_position=-1), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # B cannot apply (its mirror is locked): NOT_SERVING past --max-lag, SERVING again once it catches up
    lock = sqlite3.connect(tmp_path / "b" / "images.sqlite3", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        head = a.upsert(["late"], vectors[0:1])
        wait_for(lambda: not health_serving(b.address), 10, "B reporting NOT_SERVING")
        assert health_serving(a.address)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: health_serving(b.address), 10, "B SERVING again")
    settle([a, b], head)
    assert a.answers() == b.answers()

    # a replica on an empty disk boots from A's shared snapshot and replays the rest
    wait_for(lambda: any(shared.glob("*/shard-0-of-1/index-*.faiss")), 15, "a published snapshot")
    c = start(stack, procs, tmp_path / "c", url, ["--shared-snapshots", str(shared)])
    assert "copied the shared snapshot" in c.proc.output()
    settle([c], head)
    assert c.stats().count == a.stats().count and c.answers() == a.answers()


def test_replica_killed_mid_ingestion(pg: PgCluster, stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    url = pg.create_database()
    a = start(stack, procs, tmp_path / "a", url)
    b = start(stack, procs, tmp_path / "b", url)
    dim = a.stats().model.dim
    vectors = np.random.default_rng(2).standard_normal((700, dim)).astype(np.float32)
    ids = [f"img-{i % 600}" for i in range(700)]  # 100 rewrites of earlier ids
    killed = threading.Event()
    heads: list[int] = []

    def ingest() -> None:
        for start_ in range(0, 700, 10):
            heads.append(a.upsert(ids[start_:start_ + 10], vectors[start_:start_ + 10]))
            if start_ == 200:
                killed.set()
            time.sleep(0.02)

    writer = threading.Thread(target=ingest)
    writer.start()
    assert killed.wait(60)
    b.proc.kill()  # kill -9 while A keeps writing
    assert writer.is_alive(), "ingestion ended before the kill; write more"
    b = start(stack, procs, tmp_path / "b", url)
    writer.join(timeout=120)
    settle([a, b], max(heads))
    assert a.stats().count == b.stats().count == len(set(ids))
    assert a.answers() == b.answers()


def test_rows_committed_out_of_order_are_not_skipped(pg: PgCluster, tmp_path: Path) -> None:
    url = pg.create_database()
    first, second = PgStore(url), PgStore(url)
    replica = Replica(PgStore(url), Store(tmp_path / "r" / "images.sqlite3"), ShardSpec())
    for store in (first, second):
        store.bind("m", 4, "HNSW32,Flat", 1)
    replica.prepare("m", 4, "HNSW32,Flat")
    collection = Collection(tmp_path / "r", "m", 4, store=replica.mirror)
    replica.start(collection)
    vectors = np.eye(4, dtype=np.float32)
    holding, release = threading.Event(), threading.Event()
    second_done: list[int] = []

    def slow_first_writer() -> None:  # takes its position first, commits last
        with first.writing() as writer:
            writer.upsert([ImageRecord("early", vectors[0])])
            holding.set()
            release.wait(10)

    slow = threading.Thread(target=slow_first_writer)
    slow.start()
    assert holding.wait(10)
    fast = threading.Thread(target=lambda: second_done.append(second.upsert([ImageRecord("late", vectors[1])])[1]))
    fast.start()
    time.sleep(0.5)  # the second writer tries to commit while the first is open; the replica keeps tailing
    assert not second_done, "the second writer committed ahead of a writer holding an earlier position"
    release.set()
    slow.join(10)
    fast.join(10)
    assert replica.wait_for(second_done[0], 5)
    assert sorted(h.id for h in collection.search(vectors[0], 5)) == ["early", "late"]
    assert collection.stats().count == 2
    replica.close()
    collection.close()
    for store in (first, second):
        store.close()


def test_other_settings_refused(pg: PgCluster, tmp_path: Path) -> None:
    url = pg.create_database()
    store = PgStore(url)
    store.bind("model-a", 4, "HNSW32,Flat", 2)
    with pytest.raises(FailedPrecondition, match=r"shards '2' \(this server: '1'\)"):
        PgStore(url).bind("model-a", 4, "HNSW32,Flat", 1)
    with pytest.raises(FailedPrecondition, match="model 'model-a' \\(this server: 'model-b'\\)"):
        PgStore(url).bind("model-b", 4, "HNSW32,Flat", 2)
    sqlite_dir = tmp_path / "sqlite"  # a data dir holding a SQLite collection is not taken as a mirror
    Store(sqlite_dir / "images.sqlite3").upsert([ImageRecord("x", np.ones(4, dtype=np.float32))])
    with pytest.raises(FailedPrecondition, match="empty --data-dir"):
        Replica(PgStore(url), Store(sqlite_dir / "images.sqlite3"), ShardSpec(0, 2)).prepare(
            "model-a", 4, "HNSW32,Flat")
    store.close()


def test_each_shard_replica_holds_its_shard(pg: PgCluster, tmp_path: Path) -> None:
    url = pg.create_database()
    vectors = np.random.default_rng(3).standard_normal((40, 4)).astype(np.float32)
    replicas, collections = [], []
    for index in range(2):
        replica = Replica(PgStore(url), Store(tmp_path / f"s{index}" / "images.sqlite3"), ShardSpec(index, 2))
        replica.prepare("m", 4, "HNSW32,Flat")
        collections.append(Collection(tmp_path / f"s{index}", "m", 4, store=replica.mirror))
        replica.start(collections[-1])
        replicas.append(replica)
    _, head = replicas[0].upsert([ImageRecord(f"id-{i}", vectors[i]) for i in range(40)])
    _, head = replicas[1].delete(["id-0", "id-1"])
    held = []
    for index, (replica, collection) in enumerate(zip(replicas, collections)):
        assert replica.wait_for(head, 5)
        ids = {h.id for h in collection.search(vectors[5], 40)}
        assert ids == {f"id-{i}" for i in range(2, 40) if shard_of(f"id-{i}", 2) == index}
        held.append(ids)
    assert held[0] and held[1] and len(held[0] | held[1]) == 38
    for replica, collection in zip(replicas, collections):
        replica.close()
        collection.close()


def test_writes_while_the_store_is_down_are_unavailable(tmp_path: Path) -> None:
    if find_bin_dir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    cluster = start_cluster()  # its own: this test stops it
    try:
        replica = Replica(PgStore(cluster.create_database(), timeout_s=2), Store(tmp_path / "images.sqlite3"),
                          ShardSpec())
        replica.prepare("m", 4, "HNSW32,Flat")
    finally:
        cluster.stop()
    with pytest.raises(Unavailable, match="unreachable"):
        replica.upsert([ImageRecord("x", np.ones(4, dtype=np.float32))])
    with pytest.raises(Unavailable, match="unreachable"):
        replica.delete(["x"])
    replica.close()


@pytest.mark.parametrize("kind", ["directory", "s3"])
def test_snapshot_share_round_trip(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   procs: list[Proc]) -> None:
    """A snapshot published by one replica boots another (S3 through moto's real server)."""
    if kind == "s3":
        port = free_port()
        moto = spawn("moto", [sys.executable, "-m", "moto.server", "-p", str(port)], tmp_path / "logs")
        procs.append(moto)
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        import boto3

        def bucket() -> bool:
            try:
                boto3.client("s3").create_bucket(Bucket="snaps")
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_for(bucket, 30, "moto server", moto.popen)
        location = "s3://snaps/clipsearch"
    else:
        location = str(tmp_path / "shared")
    vectors = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32)
    first = Collection(tmp_path / "a", "m", 8)
    first.upsert([ImageRecord(str(i), vectors[i]) for i in range(300)])
    first.snapshot()
    share = share_for(location, "c0ffee", ShardSpec())
    published = share.publish(tmp_path / "a")
    assert published is not None
    first.upsert([ImageRecord("after", vectors[0] * -1)])  # newer than the snapshot: replayed from the store
    first.snapshot()
    assert share.publish(tmp_path / "a") != published  # a newer snapshot replaces it (the previous is kept)
    (tmp_path / "b").mkdir()
    with sqlite3.connect(tmp_path / "a" / "images.sqlite3") as src, \
            sqlite3.connect(tmp_path / "b" / "images.sqlite3") as dst:
        src.backup(dst)  # the mirror, caught up
    assert share.fetch(tmp_path / "b") and not share.fetch(tmp_path / "b")  # only into a data dir without one
    assert not share_for(location, "another-collection", ShardSpec()).fetch(tmp_path / "c")
    second = Collection(tmp_path / "b", "m", 8)
    assert second.loaded_from_snapshot
    for q in vectors[:5]:
        assert [(h.id, h.score) for h in second.search(q, 10)] == [(h.id, h.score) for h in first.search(q, 10)]
    first.close()
    second.close()


# --- two replicas and a router on one store ---------------------------------------------------------


@dataclass
class Pair:
    a: Replica_  # both started with --read-wait 1
    b: Replica_
    router: str
    router_proc: Proc


@pytest.fixture(scope="module")
def pair(pg: PgCluster, tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Replicas A and B of one shard on a fresh database, and a router in front of both with the default
    --replica-writes (auto). Health checks are rare (10 s), so that what a call does to a replica's health
    shows in the next call."""
    tmp = tmp_path_factory.mktemp("pair")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="pg-pair")
    started: list[Proc] = []
    try:
        url = pg.create_database()
        a = start(stack, started, tmp / "a", url, ["--read-wait", "1"])
        b = start(stack, started, tmp / "b", url, ["--read-wait", "1"])
        router, address = start_router(stack, [f"{a.address},{b.address}"],
                                       ["--health-interval", "10", "--shard-timeout", "3"])
        started.append(router)
        yield Pair(a, b, address, router)
    finally:
        for proc in started:  # all shut down at once, then each is waited for (bounded)
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(started):
            proc.stop(timeout=15)


def _webp(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(out, format="WEBP")
    return out.getvalue()


def test_thumbnails_travel_with_their_image_to_the_other_replica(pair: Pair) -> None:
    a, b = pair.a, pair.b
    vectors = np.random.default_rng(5).standard_normal((3, a.stats().model.dim)).astype(np.float32)
    red, blue, green = _webp((255, 0, 0)), _webp((0, 0, 255)), _webp((0, 255, 0))
    head = a.upsert(["th-0", "th-1", "th-2"], vectors, {"th-0": red, "th-1": blue})  # th-2 has none
    settle([b], head)
    got = b.thumbnails(["th-1", "th-0", "th-1"])
    assert [(t.id, t.thumbnail.data, t.thumbnail.mime_type) for t in got.thumbnails] == [
        ("th-1", blue, "image/webp"), ("th-0", red, "image/webp"), ("th-1", blue, "image/webp")]
    with pytest.raises(grpc.RpcError) as err:
        b.thumbnails(["th-0", "th-2"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'th-2'" in (err.value.details() or "")
    assert list(b.thumbnails(["th-2", "th-0"], allow_missing=True).not_found) == ["th-2"]
    inline = b.search.ImageSearch(search_pb.ImageSearchRequest(id="th-2", k=2, include_thumbnails=True), timeout=10)
    assert {r.id: r.thumbnail for r in inline.results} == {"th-0": red, "th-1": blue}

    # replaced through B (th-0 without a thumbnail now, th-1 with another one), then deleted through B
    head = b.upsert(["th-0", "th-1"], vectors[:2], {"th-1": green})
    settle([a], head)
    got = a.thumbnails(["th-0", "th-1"], allow_missing=True)
    assert list(got.not_found) == ["th-0"] and [t.thumbnail.data for t in got.thumbnails] == [green]
    head = b.index.DeleteImages(index_pb.DeleteImagesRequest(ids=["th-1"]), timeout=10).position
    settle([a], head)
    for server in (a, b):
        assert list(server.thumbnails(["th-0", "th-1"], allow_missing=True).not_found) == ["th-0", "th-1"]


def test_the_client_reads_its_writes_on_another_replica(pair: Pair) -> None:
    vectors = np.random.default_rng(6).standard_normal((2, pair.a.stats().model.dim)).astype(np.float32)
    token = pair.a.upsert(["rw-0", "rw-1"], vectors)  # the client has no upsert: workers write
    with Client(pair.b.address, timeout=10) as on_b:
        assert on_b.image_search(id="rw-0", k=1, min_position=token)  # NotFoundError if B had not applied it
        with pytest.raises(UnavailableError, match="position"):  # the kwarg reaches the server: B waits 1 s
            on_b.text_search("a red circle", k=1, min_position=token + 1000)
        with Client(pair.a.address, timeout=10) as on_a:
            deletion = on_a.delete(["rw-0", "never-written"])
        deleted, not_found = deletion
        assert (deleted, not_found) == (["rw-0"], ["never-written"]) and deletion.position > token
        with pytest.raises(NotFoundError):
            on_b.image_search(id="rw-0", k=1, min_position=deletion.position)
        stats = on_b.stats()
        assert stats.store_kind == "postgresql" and stats.applied_position >= deletion.position

    async def through_async() -> list[str]:
        async with AsyncClient(pair.b.address, timeout=10) as client:
            hits = await client.image_search(id="rw-1", k=5, min_position=deletion.position)
            return [h.id for h in hits]

    assert "rw-0" not in asyncio.run(through_async())


def test_the_router_writes_once_to_a_shared_store(pair: Pair) -> None:
    a, b = pair.a, pair.b
    dim = a.stats().model.dim
    vectors = np.random.default_rng(7).standard_normal((6, dim)).astype(np.float32)
    with grpc.insecure_channel(pair.router) as channel:
        index = index_grpc.IndexServiceStub(channel)

        def upsert(ids: list[str], rows: np.ndarray) -> index_pb.UpsertVectorsResponse:
            return index.UpsertVectors(index_pb.UpsertVectorsRequest(model=a.stats().model, records=[
                index_pb.VectorRecord(id=i, vector=v.tobytes()) for i, v in zip(ids, rows)]), timeout=30)

        first = upsert(["rt-0"], vectors[:1])
        second = upsert([f"rt-{i}" for i in range(1, 6)], vectors[1:])
        # one position per record written: sent to both replicas, 5 records would take 10 positions
        assert (second.upserted, second.position - first.position) == (5, 5)
        gone = index.DeleteImages(index_pb.DeleteImagesRequest(ids=["rt-5"]), timeout=10)
        assert list(gone.deleted) == ["rt-5"] and gone.position == second.position + 1
        settle([a, b], gone.position)
        routed = index.GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=10)
    assert "writes go to one replica" in pair.router_proc.output()
    for server in (a, b):  # each replica finds every write, whichever replica took it
        for i in range(5):
            found = server.search.ImageSearch(search_pb.ImageSearchRequest(id=f"rt-{i}", k=50), timeout=10)
            ids = {r.id for r in found.results}
            assert "rt-5" not in ids and {f"rt-{j}" for j in range(5) if j != i} <= ids
    assert a.stats().count == b.stats().count
    assert (routed.store_kind, routed.shards_answered, routed.lag_ms) == ("postgresql", 1, 0)
    assert routed.applied_position >= gone.position and routed.store_position >= routed.applied_position
    with Client(pair.router, timeout=10) as client:  # forbid_partial through the client and the router
        whole = client.text_search("a red circle", k=3, forbid_partial=True, min_position=gone.position)
        assert (whole.shards_total, whole.shards_answered, whole.partial) == (1, 1, False)


def test_an_unreachable_position_takes_no_replica_out_of_the_router(pair: Pair) -> None:
    """Each replica answers UNAVAILABLE after its 1 s --read-wait; the router tries both, fails the call,
    and keeps both in rotation (a replica that failed with UNAVAILABLE otherwise counts as down until the
    next health check, 10 s away)."""
    with grpc.insecure_channel(pair.router) as channel:  # a plain stub: no client retries
        stub = search_grpc.SearchServiceStub(channel)
        head = pair.a.stats().store_position
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.TextSearch(search_pb.TextSearchRequest(text="a red circle", k=3, min_position=head + 10_000),
                            timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "position" in (err.value.details() or "")
        assert time.monotonic() - started < 3  # both replicas asked, within the shard timeout
        for _ in range(4):  # both replicas still in the rotation
            reply = stub.TextSearch(search_pb.TextSearchRequest(text="a red circle", k=3, forbid_partial=True),
                                    timeout=10)
            assert reply.shards_answered == 1


def test_two_shards_on_one_store_behind_the_router(pg: PgCluster, stack: Stack, procs: list[Proc],
                                                   tmp_path: Path) -> None:
    """A router write split over two shards of one store returns a position that covers both parts: a
    search and GetThumbnails through the router with it see every record, each shard holds its own."""
    url = pg.create_database()
    shards = [start(stack, procs, tmp_path / f"s{i}", url, ["--shard", f"{i}/2"]) for i in range(2)]
    router, address = start_router(stack, [s.address for s in shards])
    procs.append(router)
    dim = shards[0].stats().model.dim
    ids = [f"two-{i}" for i in range(10)]
    assert {shard_of(i, 2) for i in ids} == {0, 1}
    vectors = np.random.default_rng(8).standard_normal((10, dim)).astype(np.float32)
    thumbs = {i: _webp((25 * n, 0, 0)) for n, i in enumerate(ids)}
    with grpc.insecure_channel(address) as channel:
        reply = index_grpc.IndexServiceStub(channel).UpsertVectors(index_pb.UpsertVectorsRequest(
            model=shards[0].stats().model, records=[index_pb.VectorRecord(
                id=i, vector=v.tobytes(), thumbnail=types_pb2.Thumbnail(data=thumbs[i], mime_type="image/webp"))
                for i, v in zip(ids, vectors)]), timeout=30)
        # a fresh store's positions start at 1: after both parts the head is 11 (the earlier part's is lower)
        assert (reply.upserted, reply.position) == (10, 11)
        search = search_grpc.SearchServiceStub(channel)
        found = search.TextSearch(search_pb.TextSearchRequest(text="a red circle", k=20, min_position=reply.position,
                                                              forbid_partial=True), timeout=10)
        assert sorted(r.id for r in found.results) == sorted(ids) and found.shards_answered == 2
        got = search.GetThumbnails(search_pb.GetThumbnailsRequest(ids=ids[::-1]), timeout=10)
        assert [(t.id, t.thumbnail.data) for t in got.thumbnails] == [(i, thumbs[i]) for i in ids[::-1]]
        routed = index_grpc.IndexServiceStub(channel).GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=10)
    assert (routed.count, routed.shard_count, routed.store_kind) == (10, 2, "postgresql")
    assert routed.applied_position >= reply.position
    for index, server in enumerate(shards):
        assert server.stats().count == sum(shard_of(i, 2) == index for i in ids)


def test_a_replica_booted_from_a_shared_snapshot_of_a_compressed_kind_scores_exactly(tmp_path: Path) -> None:
    """The share carries index-<L>.faiss but not vectors.f32: re-ranking read zeros (or failed)."""
    kind = KindOptions(kind="hnsw-sq8", train_min=300)
    vectors = np.random.default_rng(4).standard_normal((600, 16)).astype(np.float32)
    a = Collection(tmp_path / "a", "m", 16, kind=kind)
    a.upsert([ImageRecord(str(i), vectors[i]) for i in range(600)])
    a.wait_for_compaction()  # trained
    a.snapshot(force=True)
    share = share_for(str(tmp_path / "shared"), "c0ffee", ShardSpec())
    assert share.publish(tmp_path / "a")
    a.upsert([ImageRecord("after", -vectors[0])])  # replayed on b, sealed: vectors.f32 grows
    (tmp_path / "b").mkdir()
    with sqlite3.connect(tmp_path / "a" / "images.sqlite3") as src, \
            sqlite3.connect(tmp_path / "b" / "images.sqlite3") as dst:
        src.backup(dst)
    assert share.fetch(tmp_path / "b")
    b = Collection(tmp_path / "b", "m", 16, kind=kind)
    assert b.loaded_from_snapshot
    b.seal()
    for q in vectors[:5]:
        assert [(h.id, round(h.score, 4)) for h in b.search(q, 5)] == [
            (h.id, round(h.score, 4)) for h in a.search(q, 5)]
    a.close()
    b.close()


def test_a_uri_with_nul_is_invalid_argument_on_a_postgresql_store(
        pg: PgCluster, stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    """It was INTERNAL (psycopg.DataError), so a worker failed its whole batch for one such image."""
    server = start(stack, procs, tmp_path / "a", pg.create_database())
    s = server.stats()
    with pytest.raises(grpc.RpcError) as err:
        server.index.UpsertVectors(index_pb.UpsertVectorsRequest(model=s.model, records=[index_pb.VectorRecord(
            id="x", vector=np.ones(s.model.dim, dtype=np.float32).tobytes(), uri="/a\x00b.png")]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "records[0].uri" in err.value.details()


def test_a_mirror_older_than_the_deletion_memory_is_refused(pg: PgCluster, tmp_path: Path) -> None:
    """A replica offline while a deletion aged out of `deletions` used to keep the image for good."""
    url = pg.create_database()
    v = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    a = Replica(PgStore(url), Store(tmp_path / "a" / "images.sqlite3"), ShardSpec())
    a.prepare("m", 4, "hnsw")
    b = Replica(PgStore(url), Store(tmp_path / "b" / "images.sqlite3"), ShardSpec())
    b.prepare("m", 4, "hnsw")
    a.upsert([ImageRecord(i, v[n]) for n, i in enumerate("xyz")])
    b.prepare("m", 4, "hnsw")
    b.close()  # offline from here
    a.pg.delete(["x"], now_ms=int(time.time() * 1000) - DELETION_MEMORY_MS - 3_600_000)
    a.pg.delete(["y"])  # purges x's deletion
    b = Replica(PgStore(url), Store(tmp_path / "b" / "images.sqlite3"), ShardSpec())
    with pytest.raises(FailedPrecondition, match="empty --data-dir"):
        b.prepare("m", 4, "hnsw")
    b.close()
    a.close()
