"""Scoped tokens: a tokens file of read and write tokens, the method-to-scope table, PERMISSION_DENIED,
revocation by rewriting the file or SIGHUP, a malformed file at start-up and on reload, the single
CLIPSEARCH_AUTH_TOKEN as a write token, and tokens never written to the server log."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import grpc
import numpy as np
import pytest
import redis as redis_lib

from clipsearch import Client, PermissionDeniedError, UnauthenticatedError
from clipsearch.v1 import (
    index_service_pb2,
    index_service_pb2_grpc,
    ingest_service_pb2,
    record_service_pb2,
    search_service_pb2,
)
from clipsearch_core import jobqueue
from clipsearch_devkit.data import synthetic_inputs
from clipsearch_devkit.procs import Proc, Stack, free_port, spawn
from clipsearch_server.api.security import READ_METHODS, WRITE_METHODS, method_scopes, required_scope
from clipsearch_server.api.tokens import TokensFileError, parse_tokens

pytestmark = pytest.mark.timeout(240)

READ_TOKEN = "read-tok-8c1f0a9e77"
WRITE_TOKEN = "write-tok-51b2d3c4e6"
DOOMED_TOKEN = "doomed-tok-0a0b0c0d1e"  # revoked by rewriting the file
HUP_TOKEN = "hupped-tok-9f8e7d6c5b"  # revoked by SIGHUP
HUP_REPLACEMENT = "hupnew-tok-1a2b3c4d5e"  # same length as HUP_TOKEN
ENV_TOKEN = "env-tok-77aa88bb99"
ALL_TOKENS = (READ_TOKEN, WRITE_TOKEN, DOOMED_TOKEN, HUP_TOKEN, HUP_REPLACEMENT, ENV_TOKEN)


def tokens_text(*lines: str) -> str:
    return "# clipsearch tokens\n\n" + "\n".join(lines) + "\n"


GOOD = (f"{READ_TOKEN} read search-frontend", f"{WRITE_TOKEN} write admin", f"{DOOMED_TOKEN} read doomed",
        f"{HUP_TOKEN} read hupped")


class Server:
    def __init__(self, proc: Proc, address: str, tokens: Path, metrics: int, stack: Stack) -> None:
        self.proc, self.address, self.tokens, self.metrics, self.stack = proc, address, tokens, metrics, stack

    def client(self, token: str) -> Client:
        return Client(self.address, timeout=15, token=token)

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            return r.read().decode()

    def upsert(self, token: str) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = index_service_pb2_grpc.IndexServiceStub(channel)
            meta = (("authorization", f"Bearer {token}"),)
            model = stub.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=10, metadata=meta).model
            vector = np.ones(model.dim, dtype="<f4").tobytes()
            stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                model=model, records=[index_service_pb2.VectorRecord(id="upserted-1", vector=vector)]),
                timeout=10, metadata=meta)


@pytest.fixture(scope="module")
def server(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tokens")
    tokens = tmp / "tokens.txt"
    tokens.write_text(tokens_text(*GOOD))
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="tokens",
                  extra_env={"CLIPSEARCH_AUTH_TOKEN": ENV_TOKEN})
    metrics = free_port()
    proc, address = stack.start_server(tmp / "data", extra=[
        "--tokens-file", str(tokens), "--metrics-port", str(metrics), "--log-level", "DEBUG"])
    try:
        yield Server(proc, address, tokens, metrics, stack)
    finally:
        proc.stop()


def eventually(check: Callable[[], bool], timeout: float = 4.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def rejected(server: Server, token: str) -> bool:
    try:
        with server.client(token) as client:
            client.stats()
        return False
    except UnauthenticatedError:
        return True


def test_every_rpc_of_the_services_has_a_scope() -> None:
    methods = {
        f"/{service.full_name}/{method.name}": method.name
        for module in (search_service_pb2, ingest_service_pb2, index_service_pb2, record_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert len(methods) == 18
    assert not READ_METHODS & WRITE_METHODS
    for path, name in methods.items():
        assert name in READ_METHODS | WRITE_METHODS, f"{path} has no scope: add it to READ_METHODS or WRITE_METHODS"
    assert set(method_scopes()) == set(methods)
    assert required_scope("/clipsearch.v1.SearchService/TextSearch") == "read"
    assert required_scope("/clipsearch.v1.SearchService/GetThumbnails") == "read"
    assert required_scope("/clipsearch.v1.SearchService/BatchSearch") == "read"
    assert required_scope("/clipsearch.v1.RecordService/GetRecords") == "read"
    assert required_scope("/clipsearch.v1.RecordService/CountRecords") == "read"
    assert required_scope("/clipsearch.v1.RecordService/ScrollRecords") == "read"
    assert required_scope("/clipsearch.v1.SearchService/Embed") == "read"
    assert required_scope("/clipsearch.v1.RecordService/UpdateRecords") == "write"
    assert required_scope("/clipsearch.v1.RecordService/DeleteRecords") == "write"
    assert required_scope("/clipsearch.v1.IndexService/DeleteImages") == "write"
    assert required_scope("/clipsearch.v1.IndexService/SomethingNew") == "write"  # fails closed


@pytest.mark.parametrize("line, problem", [
    ("sekrit-token", "expected 'TOKEN SCOPE [NAME]'"),
    ("sekrit-token read name extra", "expected 'TOKEN SCOPE [NAME]'"),
    ("sekrit-token admin", "unknown scope"),
])
def test_malformed_line_names_the_line_not_the_token(line: str, problem: str) -> None:
    with pytest.raises(TokensFileError) as info:
        parse_tokens(tokens_text("ok-token write", line), "tokens.txt")
    assert "tokens.txt line 4" in str(info.value) and problem in str(info.value)
    assert "sekrit" not in str(info.value)


def test_duplicate_token_is_an_error() -> None:
    with pytest.raises(TokensFileError, match="line 4: the same token is already listed on line 3"):
        parse_tokens(tokens_text("dup-token write a", "dup-token read b"), "tokens.txt")


def test_read_token_reads_but_cannot_write(server: Server) -> None:
    with server.client(READ_TOKEN) as client:
        client.text_search("a red circle", k=1)
        client.stats()
        client.progress()
        client.failures()
        client.queue_status()
        writes = {
            "DeleteImages": lambda: client.delete(["img-0"]),
            "SubmitImages": lambda: client.submit(synthetic_inputs(per_class=1, seed=1)[:1]),
            "UpsertVectors": lambda: server.upsert(READ_TOKEN),
            "RetryFailures": lambda: client.retry_failures(),
        }
        for name, call in writes.items():
            with pytest.raises((PermissionDeniedError, grpc.RpcError)) as info:
                call()
            exc = info.value
            details = exc.details() if isinstance(exc, grpc.RpcError) else exc.details
            code = exc.code() if isinstance(exc, grpc.RpcError) else exc.code
            assert code == grpc.StatusCode.PERMISSION_DENIED, name
            assert details == (f"this call ({name}) needs a token with the write scope; "
                               "the token presented has read")
            assert READ_TOKEN not in details
    assert re.search(r'clipsearch_rpc_total\{code="PERMISSION_DENIED",method="DeleteImages"\} [1-9]', server.scrape())


def test_write_token_reads_and_writes(server: Server) -> None:
    with server.client(WRITE_TOKEN) as client:
        client.text_search("a red circle", k=1)
        assert client.stats().count >= 0
        assert client.submit(synthetic_inputs(per_class=1, seed=2)[:1]).batch_id
        server.upsert(WRITE_TOKEN)
        deleted, missing = client.delete(["upserted-1", "never-was"])
        assert deleted == ["upserted-1"] and missing == ["never-was"]


def test_env_auth_token_is_a_write_token(server: Server) -> None:
    with server.client(ENV_TOKEN) as client:
        client.text_search("a blue star", k=1)
        assert client.delete(["nothing-here"]) == ([], ["nothing-here"])


@pytest.mark.parametrize("token", ["", "unknown-token", READ_TOKEN + "x", READ_TOKEN[:-1]])
def test_missing_or_unknown_token_is_unauthenticated(server: Server, token: str) -> None:
    with server.client(token) as client:
        with pytest.raises(UnauthenticatedError, match="bearer token"):
            client.text_search("a red circle", k=1)


def test_revoke_by_rewriting_the_file(server: Server) -> None:
    assert not rejected(server, DOOMED_TOKEN)
    server.tokens.write_text(tokens_text(*(line for line in GOOD if not line.startswith(DOOMED_TOKEN))))
    assert eventually(lambda: rejected(server, DOOMED_TOKEN), timeout=3)
    with server.client(READ_TOKEN) as client:
        client.text_search("a red circle", k=1)


def test_revoke_by_sighup(server: Server) -> None:
    """The file changes without a visible change (same size, mtime and inode), so only SIGHUP reloads it."""
    assert not rejected(server, HUP_TOKEN)
    before = os.stat(server.tokens)
    text = server.tokens.read_text().replace(HUP_TOKEN, HUP_REPLACEMENT)
    with open(server.tokens, "r+") as fh:
        fh.write(text)
    os.utime(server.tokens, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(server.tokens).st_size == before.st_size
    time.sleep(1.5)  # past the change check: it must see nothing
    assert not rejected(server, HUP_TOKEN)
    server.proc.popen.send_signal(signal.SIGHUP)
    assert eventually(lambda: rejected(server, HUP_TOKEN), timeout=3)
    assert not rejected(server, HUP_REPLACEMENT)
    assert not rejected(server, READ_TOKEN)
    assert server.proc.popen.poll() is None


def test_failed_reload_keeps_the_previous_tokens(server: Server) -> None:
    good = server.tokens.read_text()
    server.tokens.write_text(good + f"{DOOMED_TOKEN} superuser\n")
    try:
        # The file is checked on the call path: keep calling until the server has looked at it.
        assert eventually(lambda: (not rejected(server, READ_TOKEN)
                                   and "tokens file not reloaded" in server.proc.output()),
                          timeout=4)
        assert re.search(r"tokens\.txt line \d+: unknown scope", server.proc.output())
        assert not rejected(server, READ_TOKEN) and not rejected(server, WRITE_TOKEN)
        assert rejected(server, DOOMED_TOKEN)  # the bad line added nothing
    finally:
        server.tokens.write_text(good)


def test_worker_with_a_read_token_exits_clearly(server: Server) -> None:
    stack = Stack(server.stack.model, server.stack.redis_url, server.stack.log_dir, "tokens-read-worker",
                  extra_env={"CLIPSEARCH_AUTH_TOKEN": READ_TOKEN})
    r = redis_lib.Redis.from_url(stack.redis_url)
    keys = jobqueue.Keys(stack.prefix)
    jobqueue.ensure_group(r, keys)
    jobqueue.submit(r, keys, [jobqueue.Job(id="read-token-job", has_blob=True, batch_id="b")],
                    [synthetic_inputs(1, 9)[0].image], "b")
    worker = stack.start_worker(server.address)
    try:
        assert worker.popen.wait(timeout=90) == 2
        assert "PERMISSION_DENIED" in worker.output() and "write scope" in worker.output()
        assert READ_TOKEN not in worker.output()
    finally:
        worker.kill()


def test_tokens_never_appear_in_the_server_log(server: Server) -> None:
    """Runs last in this module: the server has by now accepted, refused and reloaded all the tokens."""
    log = server.proc.output()
    assert "tokens file" in log and "permission denied" in log  # the log does talk about tokens
    for token in ALL_TOKENS:
        assert token not in log


def test_malformed_tokens_file_stops_the_server_naming_the_line(tiny_model: str, redis_url: str,
                                                               tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(tokens_text("fine-token write", "leaky-token-123 reed"))
    cmd = [sys.executable, "-m", "clipsearch_server", "--model", tiny_model, "--redis-url", redis_url,
           "--host", "127.0.0.1", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
           "--tokens-file", str(tokens)]
    proc = spawn("bad-tokens", cmd, tmp_path / "logs")
    try:
        assert proc.popen.wait(timeout=60) == 2
        out = proc.output()
        assert f"error: {tokens} line 4: unknown scope" in out
        assert "leaky-token" not in out
    finally:
        proc.kill()


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer ", "bEaReR"])
def test_the_auth_scheme_is_case_insensitive(server: Server, scheme: str) -> None:
    """RFC 7235 section 2.1: the scheme is a case-insensitive token (lower case was refused)."""
    with grpc.insecure_channel(server.address) as channel:
        stub = index_service_pb2_grpc.IndexServiceStub(channel)
        meta = (("authorization", f"{scheme} {READ_TOKEN}"),)
        assert stub.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=10, metadata=meta).model.dim > 0
        with pytest.raises(grpc.RpcError) as info:
            stub.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=10,
                               metadata=(("authorization", f"{scheme}x {READ_TOKEN}"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_open_server_on_every_interface_says_so(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    """No token and all interfaces: anyone on the network can write and delete. Allowed (a private network,
    a proxy that authenticates), but the log says so once at start; on loopback it does not."""
    from clipsearch_server.api.program import is_loopback

    assert [is_loopback(h) for h in ("127.0.0.1", "[::1]", "localhost", "127.0.0.2")] == [True] * 4
    assert [is_loopback(h) for h in ("[::]", "0.0.0.0", "10.0.0.1", "search.example")] == [False] * 4
    server, address = stack.start_server(tmp_path / "data", extra=["--host", "0.0.0.0"])
    procs.append(server)
    assert "no token is required (--auth-token, --tokens-file) and the server listens on 0.0.0.0" in server.output()
    quiet, _ = stack.start_server(tmp_path / "data2")
    procs.append(quiet)
    assert "no token is required" not in quiet.output()
