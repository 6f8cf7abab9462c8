"""SearchService.Embed through real processes: one server with an encoder worker, and a router over two shards.

One server (SQLite, a tokens file: every call here uses the read token, the worker the write token) indexes
PNGs and a photo-like JPEG through a real worker and holds random unit vectors written by UpsertVectors; two
shard servers and a router stand beside it. Checks: a text's embedding is the query vector TextSearch uses
and an image's the one ImageSearch uses (each result's score is the dot product of the embedding with the
stored vector); an image's embedding is the vector the worker stored for it; the model and dimension are
GetIndexStats'; unit vectors in input order; every bad input named by its index with the right code, the
server serving on; a transient uri failure through the router leaves the servers in rotation; the router,
the Python client (sync and async) and the CLI give the same vectors; a read token suffices.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from clipsearch import AsyncClient, Client, Embeddings, EmbedInput, ImageInput, InvalidArgumentError
from clipsearch.v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    record_service_pb2 as record_pb,
    record_service_pb2_grpc as record_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)
from clipsearch_devkit.photos import photo_jpeg
from clipsearch_devkit.procs import Proc, Stack, free_port, start_router
from clipsearch_devkit.tinyclip.synthetic import make_image

pytestmark = pytest.mark.timeout(300)

READ_TOKEN = "embed-read-token-4c1d9e7a2b"
WRITE_TOKEN = "embed-write-token-a93f0b5c61"
MAX_IMAGE_BYTES = 1_000_000
N_VECTORS = 24  # random unit vectors written by UpsertVectors, besides the images the worker indexes
SHAPES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "star"), ("blue", "circle")]


def meta(token: str = READ_TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def png(color: str, shape: str, seed: int) -> bytes:
    import random

    buf = io.BytesIO()
    make_image(color, shape, random.Random(seed)).save(buf, format="PNG")
    return buf.getvalue()


class _Unavailable(BaseHTTPRequestHandler):
    """Every GET is a 503: a transient failure of the image host."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


@dataclass
class Deployment:
    single: str
    router: str
    server: Proc
    root: Path  # the servers' allowed root, holding the image files
    files: dict[str, Path]  # id -> image file, indexed by the worker
    model: types_pb2.ModelInfo
    failing_url: str  # an image URL whose host answers 503

    def embed(self, inputs: list[search_pb.EmbedInput], address: str | None = None,
              token: str = READ_TOKEN) -> search_pb.EmbedResponse:
        with grpc.insecure_channel(address or self.single) as channel:
            return search_grpc.SearchServiceStub(channel).Embed(search_pb.EmbedRequest(inputs=inputs), timeout=30,
                                                                metadata=meta(token))

    def stored(self, address: str | None = None) -> dict[str, np.ndarray]:
        """Every stored unit vector of the single server (ids from a filterless count and the known ids)."""
        ids = [*self.files, *(f"vec-{i:02d}" for i in range(N_VECTORS))]
        with grpc.insecure_channel(address or self.single) as channel:
            reply = record_grpc.RecordServiceStub(channel).GetRecords(
                record_pb.GetRecordsRequest(ids=ids, include_vectors=True), timeout=30, metadata=meta())
        return {r.id: np.frombuffer(r.vector, dtype="<f4") for r in reply.records}


@pytest.fixture(scope="module")
def deployment(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("embed")
    tokens = tmp / "tokens.txt"
    tokens.write_text(f"{READ_TOKEN} read reader\n{WRITE_TOKEN} write worker\n")
    root = tmp / "images"
    root.mkdir()
    files: dict[str, Path] = {}
    for i, (color, shape) in enumerate(SHAPES):
        files[f"png-{i}"] = root / f"{color}-{shape}-{i}.png"
        files[f"png-{i}"].write_bytes(png(color, shape, seed=100 + i))
    files["photo"] = root / "photo.jpg"
    files["photo"].write_bytes(photo_jpeg(7, 640, 480))

    http = ThreadingHTTPServer(("127.0.0.1", free_port()), _Unavailable)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    failing_url = f"http://127.0.0.1:{http.server_address[1]}/image.png"

    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="embed")
    common = ["--tokens-file", str(tokens), "--allowed-root", str(root), "--max-image-bytes", str(MAX_IMAGE_BYTES),
              "--allow-network", "127.0.0.1/32", "--http-timeout", "5"]
    started: list[Proc] = []
    try:
        server, single = stack.start_server(tmp / "single", extra=common)
        started.append(server)
        started.append(stack.start_worker(single, ["--batch-size", "16", "--auth-token", WRITE_TOKEN]))
        shards = []
        for i in range(2):
            proc, address = stack.start_server(tmp / f"s{i}", extra=[*common, "--shard", f"{i}/2"])
            started.append(proc)
            shards.append(address)
        # a long health interval: a replica marked unhealthy by a call stays out of rotation for the test
        router, router_address = start_router(stack, shards, ["--health-interval", "60"])
        started.append(router)

        with Client(single, timeout=30, token=WRITE_TOKEN) as client:
            model = types_pb2.ModelInfo(name=client.stats().model, dim=client.stats().dim)
            batch = client.submit([ImageInput(image=path.read_bytes(), uri=str(path), id=image_id)
                                   for image_id, path in files.items()])
            deadline = time.monotonic() + 120
            while not (progress := client.progress(batch.batch_id)).done:
                assert time.monotonic() < deadline, f"indexing did not finish: {progress}"
                time.sleep(0.3)
            assert (progress.indexed, progress.failed) == (len(files), 0), progress
        rng = np.random.default_rng(11)
        vectors = rng.standard_normal((N_VECTORS, model.dim)).astype("<f4")
        with grpc.insecure_channel(single) as channel:
            index_grpc.IndexServiceStub(channel).UpsertVectors(index_pb.UpsertVectorsRequest(model=model, records=[
                index_pb.VectorRecord(id=f"vec-{i:02d}", vector=v.tobytes()) for i, v in enumerate(vectors)]),
                timeout=30, metadata=meta(WRITE_TOKEN))
        yield Deployment(single, router_address, server, root, files, model, failing_url)
    finally:
        for proc in reversed(started):
            proc.stop(timeout=15)
        http.shutdown()


def vectors_of(reply: search_pb.EmbedResponse) -> np.ndarray:
    return np.stack([np.frombuffer(e.vector, dtype="<f4") for e in reply.embeddings])


def text(value: str) -> search_pb.EmbedInput:
    return search_pb.EmbedInput(text=value)


def image(data: bytes) -> search_pb.EmbedInput:
    return search_pb.EmbedInput(image=data)


def uri(value: str) -> search_pb.EmbedInput:
    return search_pb.EmbedInput(uri=value)


@pytest.mark.parametrize("where", ["single", "router"])
def test_model_dim_unit_vectors_in_input_order(deployment: Deployment, where: str) -> None:
    d = deployment
    address = getattr(d, where)
    inputs = [text("a red circle"), image(d.files["png-1"].read_bytes()), text("a blue square"),
              uri(str(d.files["png-1"])), text("a red circle")]
    reply = d.embed(inputs, address)
    with Client(address, timeout=30, token=READ_TOKEN) as client:
        stats = client.stats()
    assert (reply.model.name, reply.model.dim) == (stats.model, stats.dim) == (d.model.name, d.model.dim)
    assert reply.model.name.startswith("local-dir:") and reply.model.dim > 0
    assert all(len(e.vector) == 4 * d.model.dim for e in reply.embeddings)
    got = vectors_of(reply)
    assert got.shape == (len(inputs), d.model.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(got[0], got[4])  # the same text: the same (cached) vector
    np.testing.assert_allclose(got[1], got[3], atol=1e-6)  # an image by bytes and by uri
    assert float(got[0] @ got[2]) < 0.999 and float(got[0] @ got[1]) < 0.999  # in order, not one vector repeated


def test_text_embedding_is_the_text_search_query_vector(deployment: Deployment) -> None:
    d = deployment
    stored = d.stored()
    assert len(stored) == len(d.files) + N_VECTORS
    queries = ["a red circle", "a blue square", "  a green triangle  "]
    vectors = vectors_of(d.embed([text(q) for q in queries]))
    with grpc.insecure_channel(d.single) as channel:
        stub = search_grpc.SearchServiceStub(channel)
        for query, vector in zip(queries, vectors):
            hits = stub.TextSearch(search_pb.TextSearchRequest(text=query, k=len(stored)), timeout=30,
                                   metadata=meta()).results
            assert len(hits) == len(stored)
            for hit in hits:
                assert hit.score == pytest.approx(float(vector @ stored[hit.id]), abs=1e-5), (query, hit.id)
            scores = sorted((float(vector @ v), i) for i, v in stored.items())
            assert hits[0].id == scores[-1][1]


def test_image_embedding_is_the_image_search_query_vector(deployment: Deployment) -> None:
    d = deployment
    stored = d.stored()
    for image_id in ("png-2", "photo"):
        data = d.files[image_id].read_bytes()
        by_bytes, by_uri = vectors_of(d.embed([image(data), uri(str(d.files[image_id]))]))
        np.testing.assert_allclose(by_bytes, by_uri, atol=1e-6)
        with grpc.insecure_channel(d.single) as channel:
            hits = search_grpc.SearchServiceStub(channel).ImageSearch(
                search_pb.ImageSearchRequest(image=data, k=len(stored)), timeout=30, metadata=meta()).results
        assert len(hits) == len(stored) and hits[0].id == image_id
        for hit in hits:
            assert hit.score == pytest.approx(float(by_bytes @ stored[hit.id]), abs=1e-5), (image_id, hit.id)


def test_an_image_embeds_to_the_vector_its_worker_stored(deployment: Deployment) -> None:
    d = deployment
    stored = d.stored()
    ids = list(d.files)
    embedded = vectors_of(d.embed([image(d.files[i].read_bytes()) for i in ids]))
    for image_id, vector in zip(ids, embedded):
        cosine = float(vector @ stored[image_id]) / float(np.linalg.norm(vector) * np.linalg.norm(stored[image_id]))
        assert cosine > 0.9999, (image_id, cosine)
    # and not merely alike: each image is closer to its own stored vector than to any other image's
    others = np.stack([stored[i] for i in ids])
    assert list(np.argmax(embedded @ others.T, axis=1)) == list(range(len(ids)))


def bad_cases(d: Deployment) -> list[tuple[list[search_pb.EmbedInput], grpc.StatusCode, str]]:
    ok = text("a red circle")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ([], invalid, "the request holds no inputs"),
        ([ok] * 65, invalid, "the request holds 65 inputs, the limit is 64"),
        ([ok, search_pb.EmbedInput()], invalid, "inputs[1] has nothing set: set one of text, image or uri"),
        ([ok, text("")], invalid, "inputs[1].text must not be empty or only whitespace"),
        ([ok, ok, text(" \t ")], invalid, "inputs[2].text must not be empty or only whitespace"),
        ([ok, ok, text("x" * 1001)], invalid, "inputs[2].text is 1001 characters, the limit is 1000"),
        ([ok, image(b"")], invalid, "inputs[1].image is empty (0 bytes)"),
        ([ok, image(b"this is not an image")], invalid, "inputs[1]: cannot decode image"),
        ([image(d.files["png-0"].read_bytes()), ok, image(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)], invalid,
         "inputs[2]: cannot decode image"),
        ([ok, image(b"\xff" * (MAX_IMAGE_BYTES + 1))], invalid,
         f"inputs[1].image is {MAX_IMAGE_BYTES + 1} bytes, the limit is {MAX_IMAGE_BYTES}"),
        ([ok, uri("/etc/passwd")], invalid, "inputs[1]: path is outside the allowed roots"),
        ([ok, ok, ok, uri(str(d.root / "missing.png"))], invalid, "inputs[3]: cannot read"),
        ([ok, uri("images/relative.png")], invalid, "inputs[1].uri 'images/relative.png' is not supported"),
        ([ok, uri(d.failing_url)], grpc.StatusCode.UNAVAILABLE, f"inputs[1]: cannot fetch {d.failing_url}: HTTP 503"),
    ]


def test_bad_inputs_are_named_with_the_right_code_and_the_server_serves_on(deployment: Deployment) -> None:
    d = deployment
    with grpc.insecure_channel(d.single) as channel:
        stub = search_grpc.SearchServiceStub(channel)
        for inputs, code, message in bad_cases(d):
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(search_pb.EmbedRequest(inputs=inputs), timeout=30, metadata=meta())
            assert info.value.code() == code, (message, info.value.code(), info.value.details())
            assert message in (info.value.details() or ""), (message, info.value.details())
        # exactly at the limits: 64 inputs, a 1000-character text, an image of exactly the byte limit is
        # read (and then fails to decode, which shows the size check let it through)
        assert len(stub.Embed(search_pb.EmbedRequest(inputs=[text(f"shape {i}") for i in range(63)] + [
            text("y" * 1000)]), timeout=30, metadata=meta()).embeddings) == 64
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(search_pb.EmbedRequest(inputs=[image(b"\xff" * MAX_IMAGE_BYTES)]), timeout=30, metadata=meta())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[0]: cannot decode image" in (info.value.details() or "")
        # uri errors as ImageSearch gives them for the same uri
        for bad_uri in ("/etc/passwd", str(d.root / "missing.png")):
            with pytest.raises(grpc.RpcError) as search:
                stub.ImageSearch(search_pb.ImageSearchRequest(uri=bad_uri, k=1), timeout=30, metadata=meta())
            with pytest.raises(grpc.RpcError) as embed:
                stub.Embed(search_pb.EmbedRequest(inputs=[uri(bad_uri)]), timeout=30, metadata=meta())
            assert embed.value.code() == search.value.code()
            assert embed.value.details() == f"inputs[0]: {search.value.details()}"
    assert d.server.popen.poll() is None
    assert len(d.embed([text("a red circle"), image(d.files["png-0"].read_bytes())]).embeddings) == 2


def test_router_forwards_errors_and_a_failing_url_leaves_the_servers_in_rotation(deployment: Deployment) -> None:
    d = deployment
    with grpc.insecure_channel(d.router) as channel:
        stub = search_grpc.SearchServiceStub(channel)
        for inputs, code, message in bad_cases(d):
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(search_pb.EmbedRequest(inputs=inputs), timeout=30, metadata=meta())
            assert info.value.code() == code, (message, info.value.code(), info.value.details())
            assert message in (info.value.details() or ""), (message, info.value.details())
        # both servers were asked for the failing URL; neither is taken out for it (health checks are
        # 60 s apart here, so a server marked unhealthy would stay out): the next calls are answered
        for _ in range(4):
            assert len(stub.Embed(search_pb.EmbedRequest(inputs=[text("a blue star")]), timeout=30,
                                  metadata=meta()).embeddings) == 1


def test_router_answers_the_same_vectors(deployment: Deployment) -> None:
    d = deployment
    inputs = [text("a green star"), image(d.files["photo"].read_bytes()), uri(str(d.files["png-3"])),
              text("a red square")]
    direct = vectors_of(d.embed(inputs))
    for _ in range(2):  # round robin: each shard server answers one of them
        routed = d.embed(inputs, d.router)
        assert (routed.model.name, routed.model.dim) == (d.model.name, d.model.dim)
        np.testing.assert_allclose(vectors_of(routed), direct, atol=1e-5)


def cli(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIPSEARCH_SERVER": server, "CLIPSEARCH_AUTH_TOKEN": READ_TOKEN}
    return subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_python_clients_and_cli_give_the_same_vectors(deployment: Deployment) -> None:
    d = deployment
    photo, square = d.files["photo"], d.files["png-1"]
    expected = vectors_of(d.embed([text("a red circle"), image(photo.read_bytes()), text("a blue square"),
                                   image(square.read_bytes())]))
    inputs: list[EmbedInput | str | bytes] = ["a red circle", photo.read_bytes(), EmbedInput(text="a blue square"),
                                              EmbedInput(uri=str(square))]
    with Client(d.single, timeout=30, token=READ_TOKEN) as client:
        sync = client.embed(inputs)
        with pytest.raises(InvalidArgumentError, match="not one str"):
            client.embed("a red circle")
        with pytest.raises(InvalidArgumentError, match=r"inputs\[1\]: give exactly one of text, image or uri"):
            client.embed(["a red circle", EmbedInput(text="x", uri="/y")])
        with pytest.raises(InvalidArgumentError, match=r"inputs\[0\]: cannot decode image"):
            client.embed([b"not an image"])

    async def run() -> Embeddings:
        async with AsyncClient(d.router, timeout=30, token=READ_TOKEN) as client:
            return await client.embed(inputs)

    for got in (sync, asyncio.run(run())):
        assert (got.model, got.dim) == (d.model.name, d.model.dim)
        assert len(got.embeddings) == 4
        np.testing.assert_allclose(np.array(got.floats()), expected, atol=1e-5)
        assert got.embeddings[1].floats() == pytest.approx(np.frombuffer(got.embeddings[1].vector, "<f4").tolist())

    out = cli("embed", "--text", "a red circle", "--image", str(photo), "--text", "a blue square",
              "--image", str(square), "--json", server=d.single)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["model"], data["dim"]) == (d.model.name, d.model.dim)
    assert [(e["kind"], e["input"]) for e in data["embeddings"]] == [
        ("text", "a red circle"), ("image", str(photo)), ("text", "a blue square"), ("image", str(square))]
    np.testing.assert_allclose(np.array([e["vector"] for e in data["embeddings"]]), expected, atol=1e-5)

    plain = cli("embed", "--image", str(square), "--text", "a red circle", server=d.router)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0] == f"model: {d.model.name} (dim {d.model.dim})" and len(lines) == 3
    assert lines[1].startswith(f"image {square}: [{expected[3][0]:.4f}, ") and lines[1].endswith(
        f", ...] (dim {d.model.dim})")
    assert lines[2].startswith(f'text "a red circle": [{expected[0][0]:.4f}, ')

    bad = cli("embed", "--text", "ok", "--image", str(d.root / "nope.png"), server=d.single)
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "nope.png" in bad.stderr
    empty = cli("embed", server=d.single)
    assert empty.returncode == 2 and "--text" in empty.stderr
    refused = cli("embed", "--text", "x" * 1001, server=d.single)
    assert refused.returncode == 1 and "inputs[0].text is 1001 characters" in refused.stderr


def test_a_read_token_suffices_and_no_token_does_not(deployment: Deployment) -> None:
    d = deployment
    for address in (d.single, d.router):
        assert len(d.embed([text("a red circle")], address, token=READ_TOKEN).embeddings) == 1
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                search_grpc.SearchServiceStub(channel).Embed(
                    search_pb.EmbedRequest(inputs=[text("a red circle")]), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as wrong:
                search_grpc.SearchServiceStub(channel).Embed(
                    search_pb.EmbedRequest(inputs=[text("a red circle")]), timeout=30, metadata=meta("not-a-token"))
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
