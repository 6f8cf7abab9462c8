"""Every kind of bad (or merely unusual) image goes through the real pipeline: each one is indexed
correctly or failed with a clear reason, and the worker and server keep running."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import grpc
import pytest
from PIL import Image

from clipsearch import Client, ImageInput, InvalidArgumentError, ResourceExhaustedError
from clipsearch.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from clipsearch_devkit.data import resolver_answers, wait_until
from clipsearch_devkit.procs import Proc, Stack

pytestmark = pytest.mark.timeout(240)


def peak_rss_mb(pid: int) -> int:
    """The most memory the process has used so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmHWM"))


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring enormous dimensions (a decompression bomb), with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.new("RGB", (48, 24), (255, 0, 0)), "JPEG", exif=exif)


GOOD = {
    "cmyk": encoded(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
    "png16": encoded(Image.new("I;16", (40, 30), 50000), "PNG"),
    "palette": encoded(Image.new("RGB", (40, 30), (0, 200, 0)).convert("P"), "PNG"),
    "gray": encoded(Image.new("L", (40, 30), 90), "PNG"),
    "alpha": encoded(Image.new("RGBA", (40, 30), (255, 0, 0, 100)), "PNG"),
    "exif": exif_rotated(),
    "gif": animated_gif(),
    "webp": encoded(Image.new("RGB", (40, 30), (0, 0, 255)), "WEBP"),
}
JPEG = encoded(Image.new("RGB", (200, 200), (250, 20, 20)), "JPEG")
BAD_BYTES = {
    "truncated": (JPEG[: len(JPEG) // 2], "truncated or corrupt"),
    "text": (b"hello, I am a text file named .jpg\n", "cannot decode image"),
    "bomb": (huge_png(100_000, 100_000), "decompression bomb"),
}


def test_bad_and_unusual_images(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "empty.jpg").write_bytes(b"")
    (root / "big.jpg").write_bytes(JPEG + b"\0" * 300_000)
    (root / "fine.jpg").write_bytes(JPEG)
    (tmp_path / "secret.jpg").write_bytes(JPEG)
    os.link(tmp_path / "secret.jpg", root / "linked.jpg")  # a hard link inside the root to a file outside it
    limit = ["--max-image-bytes", "200000"]
    thin = {"thin": encoded(Image.new("1", (16, 4_000_000)), "PNG"),  # 12 KB, 64 Mpx: billions once resized
            "line": encoded(Image.new("1", (1, 64_000_000)), "PNG")}  # 124 KB: OverflowError in PIL's resize
    server, address = stack.start_server(tmp_path / "data", extra=limit)
    procs.append(server)
    worker = stack.start_worker(address, ["--allowed-root", str(root), "--visibility-timeout", "1",
                                          "--max-deliveries", "2", "--allow-network", "127.0.0.0/8", *limit])
    procs.append(worker)
    client = Client(address)

    inputs = [ImageInput(image=data, id=name) for name, data in GOOD.items()]
    inputs += [ImageInput(image=data, id=name) for name, (data, _) in BAD_BYTES.items()]
    inputs += [ImageInput(image=data, id=name) for name, data in thin.items()]
    inputs += [
        ImageInput(uri=str(root / "fine.jpg"), id="path-ok"),
        ImageInput(uri=f"file://{root}/fine.jpg", id="file-uri-ok"),
        ImageInput(uri=str(root / "empty.jpg"), id="zero-bytes"),
        ImageInput(uri=str(root / "big.jpg"), id="too-big-file"),
        ImageInput(uri=str(root / ".." / "secret.jpg"), id="traversal"),
        ImageInput(uri="/etc/hostname", id="outside"),
        ImageInput(uri=str(root / "missing.jpg"), id="missing"),
        ImageInput(uri="http://127.0.0.1:9/unreachable.jpg", id="unreachable"),
        ImageInput(uri=str(root / "linked.jpg"), id="hard-link"),
        ImageInput(uri=f"file://files.example{root}/fine.jpg", id="file-uri-host"),
        ImageInput(uri="http://no-such-host.invalid/a.jpg", id="no-such-host"),
    ]
    batch = client.submit(inputs).batch_id
    with pytest.raises(InvalidArgumentError, match="images\\[0\\].image is 300001 bytes, the limit is 200000"):
        client.submit([ImageInput(image=b"\xff" * 300_001, id="oversized-upload")])

    wait_until(client, batch, 120)
    reasons = {f.id: f.reason for f in client.failures(batch)}
    expected_failures = {
        **{name: why for name, (_, why) in BAD_BYTES.items()},
        "zero-bytes": "empty (0 bytes)",
        "too-big-file": "over the limit of 200000",
        "traversal": "outside the allowed roots",
        "outside": "outside the allowed roots",
        "missing": "cannot read",
        "unreachable": "gave up after 2 attempts: cannot fetch http://127.0.0.1:9/unreachable.jpg",
        "thin": "image is 16x4000000 pixels: its sides' ratio is over the limit of 20 to 1",
        "line": "image is 1x64000000 pixels: its sides' ratio is over the limit of 20 to 1",
        "hard-link": "has 2 hard links",
        "file-uri-host": "file URL names a host ('files.example')",
        # failed at its first delivery (a name that does not exist is not an outage), unless this
        # machine's resolver cannot answer at all (then it is transient, as it should be)
        "no-such-host": ("cannot fetch http://no-such-host.invalid/a.jpg: cannot resolve host" if resolver_answers()
                         else "gave up after 2 attempts"),
    }
    assert set(reasons) == set(expected_failures), reasons
    for image_id, why in expected_failures.items():
        assert why in reasons[image_id], (image_id, reasons[image_id])
    indexed = [*GOOD, "path-ok", "file-uri-ok"]
    for image_id in indexed:
        assert client.image_search(id=image_id, k=1)  # indexed: NOT_FOUND would raise
    assert client.stats().count == len(indexed)
    assert not any(why.startswith(("unexpected error", "OverflowError")) for why in reasons.values()), reasons
    assert worker.popen.poll() is None and server.popen.poll() is None
    # The same thin images as search queries: INVALID_ARGUMENT, and the server's memory does not move
    # (it grew by 3-6 GB per query before the aspect-ratio limit).
    before = peak_rss_mb(server.popen.pid)
    for _name, data in thin.items():
        with pytest.raises(InvalidArgumentError, match="its sides' ratio is over the limit of 20 to 1"):
            client.image_search(image=data, k=1)
    assert peak_rss_mb(server.popen.pid) - before < 200, (before, peak_rss_mb(server.popen.pid))
    assert server.popen.poll() is None
    # The GIF was indexed from its first (red) frame: its nearest neighbour is another red image.
    red_like = {"alpha", "exif", "cmyk", "path-ok", "file-uri-ok"}
    assert client.image_search(id="gif", k=1)[0].id in red_like

    # Retry: a failed job goes back to the queue (and fails again for the same reason).
    retried, expired = client.retry_failures(batch, ["text"])
    assert (retried, expired) == (["text"], [])
    wait_until(client, batch, 60)
    assert [f.id for f in client.failures(batch)].count("text") == 1


def test_backpressure_when_the_queue_is_full(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    server, address = stack.start_server(tmp_path / "data", extra=["--max-queue-jobs", "5",
                                                                    "--max-queue-bytes", "1000000"])
    procs.append(server)
    client = Client(address)
    images = [ImageInput(image=JPEG, id=f"q{i}") for i in range(6)]
    client.submit(images[:5])  # no worker runs: the queue fills up
    with grpc.insecure_channel(address) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitImages(ingest_service_pb2.SubmitImagesRequest(
                images=[ingest_service_pb2.ImageSubmission(image=JPEG, id="q5")]), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full (5 jobs" in info.value.details() and "retry" in info.value.details()
    assert ("retry-after-ms", "5000") in tuple(info.value.trailing_metadata())
    with pytest.raises(ResourceExhaustedError, match="bytes"):
        client.submit([ImageInput(image=b"\xff" * 999_000, id="big")])  # jobs fit, bytes do not
    assert client.progress().submitted == 5  # the refused submissions left nothing behind
