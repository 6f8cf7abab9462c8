"""The service at its edges: health, reflection, bearer-token auth, TLS and mutual TLS, deadlines,
cancellation, message limits, metrics, the asyncio client, and the INTERNAL mapping."""

from __future__ import annotations

import asyncio
import http.server
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import redis as redis_lib
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from clipsearch import AsyncClient, Client, UnauthenticatedError, UnavailableError
from clipsearch.errors import DeadlineExceededError
from clipsearch.v1 import ingest_service_pb2, ingest_service_pb2_grpc, search_service_pb2, search_service_pb2_grpc
from clipsearch_core import jobqueue
from clipsearch_devkit.data import synthetic_inputs, wait_until
from clipsearch_devkit.procs import Proc, Stack, channel_for, free_port, wait_for
from tests.certs import Certs, make_certs

pytestmark = pytest.mark.timeout(240)
TOKEN = "s3cret-token"


class Secured:
    def __init__(self, address: str, certs: Certs, metrics: int, server: Proc, stack: Stack) -> None:
        self.address, self.certs, self.metrics, self.server, self.stack = address, certs, metrics, server, stack

    def client(self, **kw: object) -> Client:
        settings = {"token": TOKEN, "tls_ca": str(self.certs.ca), **kw}
        return Client(self.address, timeout=30, **settings)  # type: ignore[arg-type]

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            return r.read().decode()


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        time.sleep(3)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def secured(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("secured")
    certs = make_certs(tmp / "certs")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="secured",
                  extra_env={"CLIPSEARCH_AUTH_TOKEN": TOKEN})
    metrics = free_port()
    server, address = stack.start_server(
        tmp / "data", host="localhost", tls_ca=certs.ca,
        extra=["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
               "--metrics-port", str(metrics), "--allow-network", "127.0.0.0/8"])
    started = [server]
    try:
        worker = stack.start_worker(address, ["--tls-ca", str(certs.ca)])
        started.append(worker)
        s = Secured(address, certs, metrics, server, stack)
        with s.client() as client:
            batch = client.submit(synthetic_inputs(per_class=2, seed=3)).batch_id
            wait_until(client, batch, 120)
        yield s
    finally:
        for proc in reversed(started):
            proc.stop()


def test_health_is_open_per_service_and_unknown_is_not_found(secured: Secured) -> None:
    with channel_for(secured.address, secured.certs.ca) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "clipsearch.v1.SearchService", "clipsearch.v1.IngestService", "clipsearch.v1.IndexService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)  # no token needed
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nope.v1.Nothing"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(secured: Secured) -> None:
    with channel_for(secured.address, secured.certs.ca) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"clipsearch.v1.SearchService", "clipsearch.v1.IngestService", "clipsearch.v1.IndexService",
            "grpc.health.v1.Health"} <= services


def test_token_required(secured: Secured) -> None:
    for token in ("", "wrong"):
        with secured.client(token=token) as client:
            with pytest.raises(UnauthenticatedError, match="bearer token"):
                client.text_search("a red circle", k=1)
    with secured.client() as client:
        assert len(client.text_search("a red circle", k=3)) == 3


def test_worker_with_wrong_token_exits_clearly(secured: Secured) -> None:
    stack = Stack(secured.stack.model, secured.stack.redis_url, secured.stack.log_dir, "secured-bad",
                  extra_env={"CLIPSEARCH_AUTH_TOKEN": "wrong"})
    # Queue one job on the worker's own prefix: its push is what gets refused.
    r = redis_lib.Redis.from_url(stack.redis_url)
    job = jobqueue.Job(id="bad-token-job", has_blob=True, batch_id="b")
    jobqueue.ensure_group(r, jobqueue.Keys("secured-bad"))
    jobqueue.submit(r, jobqueue.Keys("secured-bad"), [job], [synthetic_inputs(1, 9)[0].image], "b")
    worker = stack.start_worker(secured.address, ["--tls-ca", str(secured.certs.ca)])
    try:
        assert worker.popen.wait(timeout=90) == 2
        assert "UNAUTHENTICATED" in worker.output()
    finally:
        worker.kill()


def test_plaintext_client_cannot_talk_to_tls_server(secured: Secured) -> None:
    with Client(secured.address, timeout=3, token=TOKEN) as client:
        with pytest.raises(UnavailableError):
            client.stats()


def test_deadline_exceeded_and_server_keeps_serving(secured: Secured) -> None:
    with secured.client() as client:
        with pytest.raises(DeadlineExceededError):
            client.text_search("a red circle", k=5, timeout=0.0005)
        assert client.stats().count > 0


def test_cancelled_call_is_recorded_as_cancelled(secured: Secured, tmp_path: Path) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with channel_for(secured.address, secured.certs.ca) as channel:
            stub = search_service_pb2_grpc.SearchServiceStub(channel)
            future = stub.ImageSearch.future(
                search_service_pb2.ImageSearchRequest(uri=f"http://127.0.0.1:{httpd.server_port}/slow.jpg", k=1),
                timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),))
            time.sleep(0.5)
            assert future.cancel()
        wait_for(lambda: 'clipsearch_rpc_total{code="CANCELLED",method="ImageSearch"} 1.0' in secured.scrape(),
                 10, "CANCELLED in metrics")
    finally:
        httpd.shutdown()


def test_oversized_message_is_resource_exhausted(secured: Secured) -> None:
    creds = grpc.ssl_channel_credentials(secured.certs.ca.read_bytes())
    big = 70 * 1024 * 1024
    with grpc.secure_channel(secured.address, creds, options=[("grpc.max_send_message_length", big * 2)]) as ch:
        stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitImages(ingest_service_pb2.SubmitImagesRequest(
                images=[ingest_service_pb2.ImageSubmission(image=b"\0" * big)]),
                timeout=60, metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(64 * 1024 * 1024) in info.value.details()  # the message names the limit


def test_metrics_exposed(secured: Secured) -> None:
    with secured.client() as client:
        client.text_search("a blue star", k=2)
        count = client.stats().count
    with secured.client(token="wrong") as bad:
        with pytest.raises(UnauthenticatedError):
            bad.stats()
    text = secured.scrape()
    assert re.search(r'clipsearch_rpc_total\{code="OK",method="TextSearch"\} [1-9]', text)
    assert 'clipsearch_rpc_total{code="UNAUTHENTICATED",method="GetIndexStats"}' in text
    assert re.search(r'clipsearch_rpc_seconds_bucket\{code="OK",le="0.5",method="TextSearch"\}', text)
    assert f"clipsearch_index_images {float(count)}" in text
    assert "clipsearch_queue_jobs 0.0" in text and "clipsearch_queue_lag 0.0" in text
    assert re.search(r"clipsearch_workers_alive [1-9]", text)


def test_async_client_has_the_same_methods(secured: Secured) -> None:
    public = {n for n in dir(Client) if not n.startswith("_")} - {"wait_until_ready"}
    assert public <= {n for n in dir(AsyncClient) if not n.startswith("_")}

    async def run() -> tuple[int, int, int]:
        async with AsyncClient(secured.address, token=TOKEN, tls_ca=str(secured.certs.ca)) as client:
            results, stats, progress = await asyncio.gather(
                client.text_search("a red circle", k=4), client.stats(), client.progress())
            return len(results), stats.count, progress.indexed

    found, count, indexed = asyncio.run(run())
    assert found == 4 and count > 0 and indexed >= count


def test_mutual_tls(tiny_model: str, redis_url: str, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp_path / "logs", prefix="mtls")
    client_pair = (certs.client_cert, certs.client_key)
    server, address = stack.start_server(
        tmp_path / "data", host="localhost", tls_ca=certs.ca, client=client_pair,
        extra=["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
               "--tls-client-ca", str(certs.ca)])
    try:
        with Client(address, timeout=5, tls_ca=str(certs.ca)) as anonymous:
            with pytest.raises(UnavailableError):
                anonymous.stats()
        with Client(address, timeout=5, tls_ca=str(certs.ca), tls_cert=str(certs.client_cert),
                    tls_key=str(certs.client_key)) as client:
            assert client.stats().count == 0
    finally:
        server.stop()
