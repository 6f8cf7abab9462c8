"""A full disk under a real server: writes are refused as RESOURCE_EXHAUSTED (retried), never INTERNAL;
workers keep retrying instead of failing images; once space comes back everything is indexed and nothing
acknowledged is lost. The data directory is a small tmpfs in a mount namespace of the server's own
(tests/smalldisk.py under `unshare`), so the disk is really full, not simulated."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from clipsearch import Client, ImageInput
from clipsearch.v1 import index_service_pb2, index_service_pb2_grpc, types_pb2
from clipsearch_devkit.data import wait_until
from clipsearch_devkit.photos import photo_jpeg
from clipsearch_devkit.procs import REPO, Proc, Stack, free_port, health_serving, spawn, wait_for

pytestmark = pytest.mark.timeout(240)

SIZE_KB, FILLER_KB = 3072, 1536  # the server starts with ~1.5 MB free; the images' thumbnails need more


def _unshare() -> list[str]:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    assert probe.returncode == 0, f"this test needs unshare with user and mount namespaces: {probe.stderr!r}"
    return ["unshare", "--user", "--map-root-user", "--mount"]


def start_on_small_disk(stack: Stack, data_dir: Path, control: Path) -> tuple[Proc, str]:
    port = free_port()
    control.mkdir(parents=True)
    server = [sys.executable, "-m", "clipsearch_server", *stack.common(), "--host", "127.0.0.1",
              "--port", str(port), "--data-dir", str(data_dir)]
    cmd = [*_unshare(), sys.executable, str(REPO / "tests" / "smalldisk.py"), str(data_dir), str(SIZE_KB),
           str(FILLER_KB), str(control), "--", *server]
    proc = spawn("server-small-disk", cmd, stack.log_dir)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: health_serving(address), 120, "server", proc.popen)
    except Exception as exc:
        proc.kill()
        raise RuntimeError(f"server did not start:\n{proc.output()[-4000:]}") from exc
    return proc, address


def test_a_full_disk_delays_ingestion_and_loses_nothing(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    control = tmp_path / "control"
    server, address = start_on_small_disk(stack, tmp_path / "data", control)
    procs.append(server)
    worker = stack.start_worker(address, ["--batch-size", "8"])
    procs.append(worker)
    client = Client(address, timeout=30)
    images = [ImageInput(image=photo_jpeg(i, 320, 240), id=f"p{i}") for i in range(160)]
    batch = client.submit(images).batch_id

    # The disk fills: the worker's pushes are refused as a full disk, and it keeps them (no failures).
    wait_for(lambda: "RESOURCE_EXHAUSTED: the server's disk is full" in worker.output(), 120, "a full disk")
    stats = client.stats()
    with grpc.insecure_channel(address) as channel:  # a direct write while full: the status a caller sees
        stub = index_service_pb2_grpc.IndexServiceStub(channel)
        vector = np.full(stats.dim, 1 / np.sqrt(stats.dim), dtype="<f4")
        with pytest.raises(grpc.RpcError) as info:
            stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                model=types_pb2.ModelInfo(name=stats.model, dim=stats.dim),
                records=[index_service_pb2.VectorRecord(
                    id=f"big{i}", vector=vector.tobytes(),
                    thumbnail=types_pb2.Thumbnail(data=np.random.default_rng(i).bytes(60_000), mime_type="image/webp"))
                    for i in range(40)]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert info.value.details().startswith("the server's disk is full (database or disk is full)")
    assert ("retry-after-ms", "5000") in tuple(info.value.trailing_metadata())
    time.sleep(3)  # several of the worker's retries
    progress = client.progress(batch)
    assert progress.failed == 0 and progress.pending > 0, progress
    assert server.popen.poll() is None and worker.popen.poll() is None

    # Space comes back: the same pushes go through, without a restart or a `retry`.
    (control / "free").write_text("")
    wait_for(lambda: (control / "freed").exists(), 10, "the filler deleted")
    progress = wait_until(client, batch, 120)
    assert (progress.indexed, progress.failed) == (160, 0), progress
    assert client.stats().count == 160  # the big refused write left nothing behind
    assert {r.id for r in client.image_search(id="p0", k=160)} | {"p0"} == {f"p{i}" for i in range(160)}
    assert "internal error" not in server.output() and "Traceback" not in server.output()
