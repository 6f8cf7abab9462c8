"""End to end: real Redis, a real gRPC server and two real worker processes, the real OpenCLIP path
with the tiny model trained on synthetic shapes. Index a few hundred images, then search."""

from __future__ import annotations

import io
import random
import re
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from clipsearch import Client, ImageInput, InvalidArgumentError, NotFoundError
from clipsearch.v1 import index_service_pb2, index_service_pb2_grpc, types_pb2
from clipsearch_devkit.procs import Proc, Stack, wait_for
from clipsearch_devkit.tinyclip.synthetic import CLASSES, iter_balanced, make_image

PER_CLASS = 10  # 24 classes -> 240 images
pytestmark = pytest.mark.timeout(400)


def png(image) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Deployment:
    def __init__(self, client: Client, server: Proc, workers: list[Proc], files: dict[str, tuple[str, str]],
                 bad: dict[str, str]) -> None:
        self.client, self.server, self.workers, self.files, self.bad = client, server, workers, files, bad


@pytest.fixture(scope="module")
def deployment(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("e2e")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="e2e")
    started: list[Proc] = []
    try:
        server, address = stack.start_server(tmp / "data")
        started.append(server)
        workers = [stack.start_worker(address, ["--batch-size", "16"], name=f"worker{i}") for i in range(2)]
        started.extend(workers)
        for w in workers:  # both consume before anything is queued, so both get a share
            wait_for(lambda w=w: "ready" in w.output(), 120, w.name, w.popen)

        images_dir = tmp / "images"
        images_dir.mkdir()
        files: dict[str, tuple[str, str]] = {}
        for n, (image, color, shape) in enumerate(iter_balanced(PER_CLASS, seed=777)):
            path = images_dir / f"{color}-{shape}-{n:03d}.png"
            image.save(path)
            files[str(path)] = (color, shape)
        truncated = png(make_image("red", "circle", random.Random(1)))[:200]
        bad = {str(images_dir / "notes.jpg"): b"this is text", str(images_dir / "truncated.png"): truncated}
        for path, data in bad.items():
            Path(path).write_bytes(data)

        client = Client(address, timeout=30)
        inputs = [ImageInput(image=Path(p).read_bytes(), uri=p, metadata={"color": c, "shape": s})
                  for p, (c, s) in files.items()]
        inputs += [ImageInput(image=Path(p).read_bytes(), uri=p, id=f"bad-{i}") for i, p in enumerate(bad)]
        first = client.submit(inputs[:100])
        second = client.submit(inputs[100:], first.batch_id)
        assert second.batch_id == first.batch_id
        deadline = time.monotonic() + 240
        while not client.progress(first.batch_id).done:
            assert time.monotonic() < deadline, f"ingestion did not finish: {client.progress(first.batch_id)}"
            time.sleep(0.5)
        yield Deployment(client, server, workers, files, bad)
        client.close()
    finally:
        for proc in reversed(started):
            proc.stop(timeout=15)


def test_start_up_heap_is_frozen(deployment: Deployment) -> None:
    """Once loaded, the server and each worker move their start-up objects out of the collector's reach
    (clipsearch_core.heap): full collections and the exit no longer walk torch's ~400,000 objects."""
    for proc in (deployment.server, *deployment.workers):
        frozen = re.search(r"(\d+) start-up objects frozen", proc.output())
        assert frozen is not None and int(frozen.group(1)) > 100_000, proc.output()[-2000:]


def test_everything_indexed_once_and_bad_images_failed(deployment: Deployment) -> None:
    d = deployment
    total = len(d.files) + len(d.bad)
    progress = d.client.progress()
    assert (progress.submitted, progress.indexed, progress.failed, progress.pending) == (total, len(d.files), 2, 0)
    assert d.client.stats().count == len(d.files)
    reasons = {f.id: f.reason for f in d.client.failures()}
    assert set(reasons) == {"bad-0", "bad-1"}
    assert "cannot decode image" in reasons["bad-0"]
    assert "truncated or corrupt" in reasons["bad-1"]
    assert all(w.popen.poll() is None for w in d.workers), "a bad image killed a worker"


def test_workers_share_the_queue_without_doing_each_others_jobs(deployment: Deployment) -> None:
    d = deployment
    for w in d.workers:
        assert w.stop() == 0
    counts = [int(re.search(r"stopped after (\d+) jobs", w.output()).group(1)) for w in d.workers]  # type: ignore[union-attr]
    assert sum(counts) == len(d.files) + len(d.bad), counts
    assert all(c > 0 for c in counts), f"one worker did all the work: {counts}"


def test_text_search_precision_at_5(deployment: Deployment) -> None:
    d = deployment
    precisions = []
    for color, shape in CLASSES:
        results = d.client.text_search(f"a {color} {shape}", k=5)
        assert len(results) == 5
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        for r in results:
            assert d.files[r.uri] == (r.metadata["color"], r.metadata["shape"])  # uri and metadata belong together
        precisions.append(sum(d.files[r.uri] == (color, shape) for r in results) / 5)
    mean = float(np.mean(precisions))
    assert mean >= 0.9, f"precision@5 {mean:.3f}: {dict(zip(CLASSES, precisions))}"


def test_image_search_by_bytes_and_by_id_returns_same_class(deployment: Deployment) -> None:
    d = deployment
    rng = random.Random(4242)
    same = []
    for color, shape in CLASSES[::3]:
        results = d.client.image_search(png(make_image(color, shape, rng)), k=5)
        same.append(np.mean([d.files[r.uri] == (color, shape) for r in results]))
    assert np.mean(same) >= 0.8, same
    query = d.client.text_search("a red circle", k=1)[0]
    by_id = d.client.image_search(id=query.id, k=5)
    assert len(by_id) == 5 and query.id not in {r.id for r in by_id}
    assert np.mean([d.files[r.uri] == d.files[query.uri] for r in by_id]) >= 0.8


def test_bad_requests_get_clear_statuses_and_server_keeps_serving(deployment: Deployment) -> None:
    d = deployment
    with pytest.raises(InvalidArgumentError, match="k must be between 1 and 1000, got 0"):
        d.client.text_search("a red circle", k=0)
    with pytest.raises(InvalidArgumentError, match="empty or only whitespace"):
        d.client.text_search("   ", k=5)
    with pytest.raises(InvalidArgumentError, match="cannot decode image"):
        d.client.image_search(b"not an image", k=5)
    with pytest.raises(NotFoundError, match="no indexed image has id 'missing'"):
        d.client.image_search(id="missing", k=5)
    with pytest.raises(InvalidArgumentError, match="outside the allowed roots"):
        d.client.image_search(uri="/etc/passwd", k=5)
    with pytest.raises(InvalidArgumentError, match="neither image bytes nor a uri"):
        d.client.submit([ImageInput()])
    with pytest.raises(NotFoundError, match="no batch"):
        d.client.progress("no-such-batch")
    with grpc.insecure_channel(d.client.server) as channel:
        stub = index_service_pb2_grpc.IndexServiceStub(channel)
        stats = d.client.stats()
        with pytest.raises(grpc.RpcError) as info:
            stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                model=types_pb2.ModelInfo(name="ViT-B-32@openai", dim=stats.dim),
                records=[index_service_pb2.VectorRecord(id="x", vector=b"\0" * 4 * stats.dim)]), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ViT-B-32@openai" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                model=types_pb2.ModelInfo(name=stats.model, dim=stats.dim),
                records=[index_service_pb2.VectorRecord(id="x", vector=b"\0" * 4)]), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw = stub.GetIndexStats(index_service_pb2.GetIndexStatsRequest(), timeout=10)  # SQLite: no positions
        assert (raw.store_kind, raw.applied_position, raw.lag_ms, raw.shard_index, raw.shard_count) == (
            "sqlite", 0, 0, 0, 1)
        assert stub.DeleteImages(index_service_pb2.DeleteImagesRequest(ids=["never-indexed"]), timeout=10).position == 0
    assert d.server.popen.poll() is None
    assert len(d.client.text_search("a blue square", k=3)) == 3
