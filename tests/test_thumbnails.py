"""Thumbnails: made by a real worker at ingestion, stored by a real server, returned by GetThumbnails
and inline with searches (sync and asyncio clients), replaced and deleted with their image; limits
and statuses; the contact sheet of `clipsearch search --sheet`."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image, ImageOps

from clipsearch import AsyncClient, Client, ImageInput, InvalidArgumentError, NotFoundError
from clipsearch.cli import main as cli_main
from clipsearch.v1 import index_service_pb2 as index_pb, index_service_pb2_grpc as index_grpc, types_pb2
from clipsearch_core import jobqueue
from clipsearch_devkit.data import submit_all, synthetic_inputs, wait_until
from clipsearch_devkit.photos import photo_jpeg
from clipsearch_devkit.procs import Stack, server_and_worker, wait_for
from clipsearch_worker.thumbs import ThumbnailSpec, make_thumbnail

pytestmark = pytest.mark.timeout(300)

PHOTOS = 3


class Deployed:
    def __init__(self, client: Client, address: str, small: list[ImageInput]) -> None:
        self.client, self.address, self.small = client, address, small


@pytest.fixture(scope="module")
def deployed(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("thumbs")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="thumbs")
    with server_and_worker(stack, tmp / "data") as (address, started):
        client = Client(address, timeout=30)
        small = synthetic_inputs(1, seed=5)  # 24 images of 64 x 64
        photos = [ImageInput(image=photo_jpeg(n), uri=f"/photos/{n}.jpg", id=f"photo-{n}") for n in range(PHOTOS)]
        wait_until(client, submit_all(client, small + photos), 120)
        yield Deployed(client, address, small)
        client.close()


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_worker_makes_a_small_webp_thumbnail_of_each_image(deployed: Deployed) -> None:
    ids = [f"photo-{n}" for n in range(PHOTOS)] + [deployed.small[0].id]
    found = deployed.client.thumbnails(ids)
    assert sorted(found) == sorted(ids)
    for n in range(PHOTOS):
        thumb = found[f"photo-{n}"]
        assert thumb.mime_type == "image/webp"
        image = _decoded(thumb.data)
        assert image.format == "WEBP"
        assert image.size == (256, 192)  # 1024 x 768 scaled to a longest side of 256
        assert len(thumb.data) < 20_000, len(thumb.data)
    assert _decoded(found[deployed.small[0].id].data).size == (64, 64)  # never enlarged


def test_unknown_ids_are_not_found_unless_allowed_missing(deployed: Deployed) -> None:
    with pytest.raises(NotFoundError) as err:
        deployed.client.thumbnails(["photo-0", "no-such-image"])
    assert "'no-such-image'" in err.value.details and "photo-0" not in err.value.details
    found = deployed.client.thumbnails(["no-such-image", "photo-0"], allow_missing=True)
    assert list(found) == ["photo-0"]


def test_limits_are_invalid_argument(deployed: Deployed) -> None:
    for ids in ([], [f"id-{n}" for n in range(101)], [""]):
        with pytest.raises(InvalidArgumentError):
            deployed.client.thumbnails(ids)
    with pytest.raises(InvalidArgumentError) as err:
        deployed.client.text_search("a red circle", k=101, include_thumbnails=True)
    assert "100" in err.value.details and "GetThumbnails" in err.value.details
    assert len(deployed.client.text_search("a red circle", k=101)) == deployed.client.stats().count  # no such limit


def test_searches_return_thumbnails_inline_when_asked(deployed: Deployed) -> None:
    plain = deployed.client.text_search("a red circle", k=10)
    assert all(r.thumbnail == b"" and r.thumbnail_mime_type == "" for r in plain)
    inline = deployed.client.text_search("a red circle", k=10, include_thumbnails=True)
    assert [r.id for r in inline] == [r.id for r in plain]
    stored = deployed.client.thumbnails([r.id for r in inline])
    assert all(r.thumbnail == stored[r.id].data and r.thumbnail_mime_type == "image/webp" for r in inline)
    similar = deployed.client.image_search(id="photo-0", k=5, include_thumbnails=True)
    assert similar and all(_decoded(r.thumbnail).size[0] > 0 for r in similar)


def test_async_client_gets_thumbnails(deployed: Deployed) -> None:
    async def run() -> tuple[dict, list]:
        async with AsyncClient(deployed.address, timeout=30) as client:
            found = await client.thumbnails(["photo-1"])
            hits = await client.text_search("a blue square", k=3, include_thumbnails=True)
            return found, hits

    found, hits = asyncio.run(run())
    assert _decoded(found["photo-1"].data).size == (256, 192)
    assert len(hits) == 3 and all(h.thumbnail for h in hits)


def test_replacing_an_image_replaces_its_thumbnail_and_deleting_deletes_it(deployed: Deployed) -> None:
    client = deployed.client
    wait_until(client, client.submit([ImageInput(image=photo_jpeg(50, 640, 480), id="replaced")]).batch_id, 60)
    first = client.thumbnails(["replaced"])["replaced"]
    assert _decoded(first.data).size == (256, 192)
    wait_until(client, client.submit([ImageInput(image=photo_jpeg(51, 300, 600), id="replaced")]).batch_id, 60)
    second = client.thumbnails(["replaced"])["replaced"]
    assert _decoded(second.data).size == (128, 256)
    assert client.delete(["replaced"]) == (["replaced"], [])
    with pytest.raises(NotFoundError):
        client.thumbnails(["replaced"])


def test_worker_options_set_the_format_and_size(deployed: Deployed, tiny_model: str, redis_url: str,
                                                tmp_path: Path) -> None:
    """A worker started with --thumbnail-format jpeg --thumbnail-size 100, on a queue of its own (another
    Redis prefix) that pushes to the same server."""
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp_path / "logs", prefix="thumbs-jpeg")
    worker = stack.start_worker(deployed.address, ["--thumbnail-format", "jpeg", "--thumbnail-size", "100"])
    queue = jobqueue.connect(redis_url)
    try:
        job = jobqueue.Job(id="jpeg-photo", has_blob=True, batch_id="b")
        jobqueue.submit(queue, jobqueue.Keys("thumbs-jpeg"), [job], [photo_jpeg(60)], "b")
        wait_for(lambda: "jpeg-photo" in deployed.client.thumbnails(["jpeg-photo"], allow_missing=True), 120,
                 "the jpeg worker's thumbnail", worker.popen)
        thumb = deployed.client.thumbnails(["jpeg-photo"])["jpeg-photo"]
        assert thumb.mime_type == "image/jpeg"
        assert _decoded(thumb.data).format == "JPEG" and _decoded(thumb.data).size == (100, 75)
    finally:
        code = worker.stop()
        queue.close()
    assert code == 0, worker.output()[-3000:]


def _upsert(deployed: Deployed, record: index_pb.VectorRecord) -> None:
    stats = deployed.client.stats()
    record.vector = np.ones(stats.dim, dtype="<f4").tobytes()
    with grpc.insecure_channel(deployed.address) as channel:
        index_grpc.IndexServiceStub(channel).UpsertVectors(index_pb.UpsertVectorsRequest(
            model=types_pb2.ModelInfo(name=stats.model, dim=stats.dim), records=[record]), timeout=30)


def test_an_upsert_without_thumbnail_removes_the_old_one(deployed: Deployed) -> None:
    """A worker with --thumbnail-size 0 sends none: the image's old picture must not stay."""
    data = make_thumbnail(Image.new("RGB", (40, 20), "red"), ThumbnailSpec(format="jpeg"))
    assert data is not None and data[:2] == b"\xff\xd8"
    _upsert(deployed, index_pb.VectorRecord(id="direct",
                                            thumbnail=types_pb2.Thumbnail(data=data, mime_type="image/jpeg")))
    assert deployed.client.thumbnails(["direct"])["direct"].mime_type == "image/jpeg"
    _upsert(deployed, index_pb.VectorRecord(id="direct"))
    assert deployed.client.thumbnails(["direct"], allow_missing=True) == {}
    assert make_thumbnail(Image.new("RGB", (40, 20)), ThumbnailSpec(size=0)) is None


@pytest.mark.parametrize("thumbnail, message", [
    (types_pb2.Thumbnail(data=b"<html>", mime_type="text/html"), "mime_type"),
    (types_pb2.Thumbnail(data=b"x" * (256 * 1024 + 1), mime_type="image/webp"), "limit is 262144"),
])
def test_upsert_refuses_a_bad_thumbnail(deployed: Deployed, thumbnail: types_pb2.Thumbnail, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _upsert(deployed, index_pb.VectorRecord(id="bad-thumb", thumbnail=thumbnail))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "records[0].thumbnail" in err.value.details() and message in err.value.details()


def test_search_sheet_writes_one_image_with_a_grid_of_results(deployed: Deployed, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.jpg"
    code = cli_main(["search", "a red circle", "-k", "7", "--server", deployed.address, "--sheet", str(out)])
    assert code == 0, capsys.readouterr().err
    sheet = _decoded(out.read_bytes())
    assert sheet.format == "JPEG"
    assert sheet.size == (3 * (256 + 8) + 8, 28 + 3 * (256 + 40 + 8) + 8)  # 7 results: 3 columns, 3 rows
    # the first cell holds the best result's thumbnail (64 x 64, enlarged to fill its 256 x 256 square)
    best = deployed.client.text_search("a red circle", k=1, include_thumbnails=True)[0]
    thumb = ImageOps.contain(_decoded(best.thumbnail).convert("RGB"), (256, 256))
    assert thumb.size == (256, 256)
    x, y = 8 + (256 - thumb.width) // 2, 28 + 8 + (256 - thumb.height) // 2
    cell = np.asarray(sheet.crop((x, y, x + thumb.width, y + thumb.height)), dtype=np.float32)
    assert np.abs(cell - np.asarray(thumb, dtype=np.float32)).mean() < 12
    assert "Match 1:" in capsys.readouterr().out


def test_store_keeps_thumbnails_beside_images(tmp_path: Path) -> None:
    """The store's rules, on a real SQLite file: an upsert sets or removes the thumbnail (also when only
    the metadata changed), a delete removes it, a late upsert of a deleted image writes none, and they
    survive reopening."""
    from clipsearch_server.storage.sqlite import ImageRecord, SqliteStore as Store

    vector = np.ones(4, dtype=np.float32) / 2
    store = Store(tmp_path / "images.sqlite3")
    store.upsert([ImageRecord("a", vector, thumbnail=b"A1", thumbnail_mime_type="image/webp"),
                  ImageRecord("b", vector, thumbnail=b"B1", thumbnail_mime_type="image/jpeg")])
    store.upsert([ImageRecord("a", vector, metadata={"k": "v"}, thumbnail=b"A2", thumbnail_mime_type="image/webp")])
    assert store.thumbnails(["a", "b", "a", "zz"]) == {"a": (b"A2", "image/webp"), "b": (b"B1", "image/jpeg")}
    store.upsert([ImageRecord("b", vector)])  # thumbnails off for this upsert: the old one goes
    assert store.delete(["a"]) == [("a", 0)]
    assert store.thumbnails(["a", "b"]) == {}
    store.upsert([ImageRecord("a", vector, submitted_at_ms=1, thumbnail=b"A3", thumbnail_mime_type="image/webp")])
    assert store.thumbnails(["a"]) == {}  # submitted before its deletion: skipped, thumbnail too
    store.upsert([ImageRecord("c", vector, thumbnail=b"C1", thumbnail_mime_type="image/png")])
    store.close()
    assert Store(tmp_path / "images.sqlite3").thumbnails(["c"]) == {"c": (b"C1", "image/png")}


@pytest.mark.parametrize("width, height, drafted", [(1024, 768, (256, 192)), (640, 480, (320, 240)),
                                                    (768, 1024, (192, 256)), (200, 150, (200, 150))])
def test_thumbnail_draft_keeps_only_the_longest_side(width: int, height: int, drafted: tuple[int, int]) -> None:
    """When the model's decode is smaller than the thumbnail (the tiny test model's 64 px input) the
    thumbnail's own JPEG decode scales in the DCT domain while the longest side stays >= the thumbnail's
    size (both sides >= 256 would decode a 1024x768 photo at 512x384, 4x the pixels); the thumbnail still
    has the exact size and looks like the image."""
    from clipsearch_core.images import LoadLimits, decode_image
    from clipsearch_worker.decode import DecodeContext, thumbnail_of

    data = photo_jpeg(3, width, height)
    assert decode_image(data, LoadLimits(), longest_side=256).size == drafted
    spec = ThumbnailSpec()
    context = DecodeContext(LoadLimits(), 64, lambda image: image, False, spec)
    for_the_model = decode_image(data, LoadLimits(), draft_size=64)
    assert max(for_the_model.size) < 256
    thumb = Image.open(io.BytesIO(thumbnail_of(data, for_the_model, context) or b""))
    scale = min(1.0, 256 / max(width, height))
    assert thumb.format == "WEBP" and thumb.size == (round(width * scale), round(height * scale))
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(thumb.size, Image.Resampling.LANCZOS),
                           dtype=np.float32)
    assert np.abs(np.asarray(thumb.convert("RGB"), dtype=np.float32) - reference).mean() < 8
