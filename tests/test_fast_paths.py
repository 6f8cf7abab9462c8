"""The fast paths stay faithful: truncated text encoding equals open_clip's encode_text, draft-mode
JPEG decoding keeps image embeddings, and micro-batching returns each caller its own vector."""

from __future__ import annotations

import asyncio
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator
from unittest.mock import patch

import numpy as np
import pytest
import torch
from PIL import Image

from clipsearch import Client, ImageInput
from clipsearch_core import model as model_module
from clipsearch_core.images import LoadLimits, decode_image
from clipsearch_core.model import ClipEncoder, ModelSpec, load_encoder
from clipsearch_devkit.data import wait_until
from clipsearch_devkit.photos import photo_jpeg
from clipsearch_devkit.procs import Proc, Stack, wait_for
from clipsearch_server.search.batching import MicroBatcher, TextBatcher

TEXTS = ["a red circle", "a photo of a blue star on a plain background", "x",
         "a very long description " * 20, "ünïcödé 🚗 sports car"]


@pytest.fixture(scope="module", params=["tiny", "ViT-B-32"])
def encoder(request: pytest.FixtureRequest, tiny_model: str) -> Iterator[ClipEncoder]:
    spec = ModelSpec(tiny_model, device="cpu") if request.param == "tiny" else ModelSpec("ViT-B-32", "none", "cpu")
    yield load_encoder(spec, threads=2)


def test_truncated_text_encoding_equals_open_clip(encoder: ClipEncoder) -> None:
    assert encoder._truncate_text  # the fast path is really taken for these models
    fast = encoder.encode_text(TEXTS)
    reference = encoder.encode_text_reference(TEXTS)
    assert np.abs(fast - reference).max() < 1e-4
    assert np.all((fast * reference).sum(axis=1) > 0.99999)
    for text, row in zip(TEXTS, fast):  # batching with other texts changes nothing
        assert np.abs(encoder.encode_text([text])[0] - row).max() < 1e-4


def test_draft_decoding_keeps_embeddings_faithful(encoder: ClipEncoder) -> None:
    photos = [photo_jpeg(seed) for seed in range(8)]  # 1024x768 JPEGs
    reference = encoder.encode_images([encoder.preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in photos])
    decoded = [decode_image(p, LoadLimits(), draft_size=encoder.image_size) for p in photos]
    assert all(d.size[0] < 1024 for d in decoded)  # the decoder really scaled in the DCT domain
    fast = encoder.encode_images([encoder.preprocess(d) for d in decoded])
    cosine = (reference * fast).sum(axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine


def test_uint8_preprocessing_gives_the_same_vectors(encoder: ClipEncoder) -> None:
    """The worker hands the model uint8 crops (a quarter of the bytes); scaling and normalizing on the
    device must give the vectors of open_clip's float preprocessing."""
    images = [Image.open(io.BytesIO(photo_jpeg(seed, 640, 480))).convert("RGB") for seed in range(4)]
    small = [encoder.preprocess_uint8(image) for image in images]
    assert all(t.dtype == torch.uint8 and t.shape == (3, encoder.image_size, encoder.image_size) for t in small)
    reference = encoder.encode_images([encoder.preprocess(image) for image in images])
    assert np.abs(encoder.encode_images(small) - reference).max() < 1e-5


def test_micro_batching_and_cache() -> None:
    calls: list[list[str]] = []

    async def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        await asyncio.sleep(0.01)
        return np.array([[float(len(t)), float(ord(t[0]))] for t in texts], dtype=np.float32)

    async def run() -> list[np.ndarray]:
        batcher = TextBatcher(encode, max_batch=8, max_wait_s=0.0, cache_size=2)  # the server's default
        texts = [f"query {i % 5}" for i in range(20)]
        vectors = await asyncio.gather(*(batcher.vector(t) for t in texts))
        again = await batcher.vector("query 4")  # cached
        await batcher.close()
        assert batcher.cache.hits >= 1
        return [*vectors, again]

    vectors = asyncio.run(run())
    for i, vector in enumerate(vectors[:20]):
        text = f"query {i % 5}"
        assert vector.tolist() == [float(len(text)), float(ord(text[0]))]
    assert len(calls) < 20  # concurrent callers shared forward passes
    assert all(len(batch) == len(set(batch)) for batch in calls)  # duplicates encoded once per batch
    assert sum(len(batch) for batch in calls) <= 20


def test_image_micro_batching_keeps_each_callers_vector() -> None:
    """Image queries have no key: equal items are not merged, every caller gets the vector of its own item."""
    calls: list[int] = []

    async def encode(items: list[int]) -> np.ndarray:
        calls.append(len(items))
        await asyncio.sleep(0.01)
        return np.array([[float(i), 1.0] for i in items], dtype=np.float32)

    async def run() -> list[np.ndarray]:
        batcher: MicroBatcher[int] = MicroBatcher(encode, max_batch=4)
        vectors = await asyncio.gather(*(batcher.vector(i % 3) for i in range(10)))
        await batcher.close()
        return vectors

    vectors = asyncio.run(run())
    assert [v[0] for v in vectors] == [float(i % 3) for i in range(10)]
    assert sum(calls) == 10 and max(calls) <= 4 and len(calls) < 10


@pytest.mark.parametrize("backend", ["torchcodec", "torchvision"])
def test_device_jpeg_decoding_is_faithful(encoder: ClipEncoder, backend: str) -> None:
    """The device decode + tensor preprocessing paths (nvJPEG on a GPU) run here on the CPU."""
    photos = [photo_jpeg(seed, 800, 600) for seed in range(6)]
    reference = encoder.encode_images([encoder.preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in photos])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io, the fallback path
        fast = encoder.encode_images(encoder.decode_jpegs(photos, backend=backend))
    cosine = (reference * fast).sum(axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_decoding_applies_exif_orientation_like_pil(encoder: ClipEncoder, orientation: int) -> None:
    """TorchCodec applies the EXIF orientation as PIL does, and so does the torchvision.io path (which
    turns the image itself: torchvision ignores apply_exif_orientation on CUDA): same decoder output,
    same resize, so equal tensors for all eight orientations, in the upright shape."""
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8).repeat(4, axis=0).repeat(4, axis=1)  # 192x320, blocky
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif)
    upright = np.asarray(decode_image(buf.getvalue(), LoadLimits()))  # PIL decode + ImageOps.exif_transpose
    assert upright.shape[:2] == ((320, 192) if orientation >= 5 else (192, 320))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reference = encoder.decode_jpegs([buf.getvalue()], backend="torchvision")[0]
        decoded = model_module._decode_on_device([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)],
                                                 "torchvision", "cpu")[0]
    fast = encoder.decode_jpegs([buf.getvalue()], backend="torchcodec")[0]
    assert fast.shape == reference.shape and fast.dtype == torch.uint8
    assert torch.equal(fast, reference)
    assert decoded.shape == (3, *upright.shape[:2])  # turned, not only resized
    assert np.abs(decoded.permute(1, 2, 0).numpy().astype(int) - upright.astype(int)).mean() < 3  # libjpeg vs PIL


def test_worker_with_device_decoding(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    procs.append(worker := stack.start_worker(address, ["--device-decode", "--batch-size", "8"]))
    # a batch through the device decoder and the model before it takes any job
    wait_for(lambda: "ready (warmed up in" in worker.output(), 120, worker.name, worker.popen)
    photos = [photo_jpeg(seed, 640, 480) for seed in range(12)]
    truncated = photos[0][: len(photos[0]) // 3]
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(png, format="PNG")
    with Client(address) as client:
        inputs = [ImageInput(image=p, id=f"jpeg-{i}") for i, p in enumerate(photos)]
        inputs.insert(3, ImageInput(image=png.getvalue(), id="png"))  # in a batch with device-decoded JPEGs
        inputs.append(ImageInput(image=truncated, id="truncated"))
        batch = client.submit(inputs).batch_id
        progress = wait_until(client, batch, 120)
        assert (progress.indexed, progress.failed) == (13, 1)
        assert [f.id for f in client.failures(batch)] == ["truncated"]
        hit = client.image_search(photos[5], k=1)[0]  # the server decodes with PIL: same vector
        assert hit.id == "jpeg-5" and hit.score > 0.99
        hit = client.image_search(png.getvalue(), k=1)[0]  # decoded by the pool, in a batch with device crops
        assert hit.id == "png" and hit.score > 0.99
        # Concurrent image queries share forward passes (micro-batching) and each gets its own answer.
        with ThreadPoolExecutor(12) as pool:
            tops = list(pool.map(lambda p: client.image_search(p, k=1)[0], photos))
        assert [t.id for t in tops] == [f"jpeg-{i}" for i in range(12)]
        assert all(t.score > 0.99 for t in tops)
        # Thumbnails: scaled on the device from the decode the model used, encoded in the pool; the PNG
        # (decoded with PIL) gets its own as before.
        thumbs = client.thumbnails([f"jpeg-{i}" for i in range(12)] + ["png"])
        for i, data in enumerate(photos):
            image = Image.open(io.BytesIO(thumbs[f"jpeg-{i}"].data))
            assert image.format == "WEBP" and image.size == (256, 192)
            reference = Image.open(io.BytesIO(data)).convert("RGB").resize((256, 192), Image.Resampling.LANCZOS)
            error = np.abs(np.asarray(image.convert("RGB"), np.float32) - np.asarray(reference, np.float32)).mean()
            assert error < 8, (i, error)
        assert Image.open(io.BytesIO(thumbs["png"].data)).size == (32, 32)


def test_device_decode_scales_thumbnails_there(encoder: ClipEncoder) -> None:
    """decode_jpegs_and_thumbnails: the same model inputs as decode_jpegs, and each image scaled down on
    the device to a longest side of 256 (never enlarged) as an (H, W, 3) uint8 array."""
    photos = [photo_jpeg(1, 640, 480), photo_jpeg(2, 480, 640), photo_jpeg(3, 200, 100)]
    inputs, thumbs = encoder.decode_jpegs_and_thumbnails(photos, thumbnail_side=256)
    assert [t.shape for t in thumbs] == [(192, 256, 3), (256, 192, 3), (100, 200, 3)]
    assert all(t.dtype == np.uint8 for t in thumbs)
    alone = encoder.decode_jpegs(photos)
    assert all(torch.equal(a, b) for a, b in zip(inputs, alone))
    assert encoder.decode_jpegs_and_thumbnails(photos[:1])[1] == [None]
    full = np.asarray(Image.open(io.BytesIO(photos[2])).convert("RGB"), np.float32)
    assert np.abs(thumbs[2].astype(np.float32) - full).mean() < 1.0  # 200x100: kept as decoded


def test_decode_stream_option_reaches_the_worker_and_changes_nothing_on_the_cpu(encoder: ClipEncoder) -> None:
    """--decode-stream (on by default) sets whether a GPU decodes on a stream of its own; a CPU has no
    streams, so both settings give the same crops and vectors there. On a GPU,
    bench/bench_decode_stream.py checks every vector of both settings with decoding beside the model."""
    from clipsearch_core import settings
    from clipsearch_worker.worker import WorkerConfig

    def config(*argv: str) -> WorkerConfig:
        return WorkerConfig.from_args(settings.parse("worker", list(argv), "t", "t"))

    assert config().decode_stream and not config("--decode-stream", "off").decode_stream
    assert encoder._decode_stream is None and encoder.own_decode_stream
    photos = [photo_jpeg(seed, 320, 240) for seed in range(3)]
    on = encoder.decode_jpegs(photos)
    encoder.own_decode_stream = False
    try:
        off = encoder.decode_jpegs(photos)
    finally:
        encoder.own_decode_stream = True
    assert all(torch.equal(a, b) for a, b in zip(on, off))
    assert np.array_equal(encoder.encode_images(on), encoder.encode_images(off))


@pytest.fixture
def grouped(encoder: ClipEncoder) -> Iterator[ClipEncoder]:
    """The encoder resizing same-sized images together, as it does on a GPU."""
    assert not encoder.group_resizes  # on the CPU, one by one
    encoder.group_resizes = True
    yield encoder
    encoder.group_resizes = False


def test_device_decode_groups_same_sized_images_without_changing_them(grouped: ClipEncoder) -> None:
    """Images of one size are resized (and their thumbnails scaled) in one call per size, as on a GPU:
    each result, in the given order, equals decoding that image alone; so are groups split by size."""
    encoder = grouped
    photos = [photo_jpeg(1, 640, 480), photo_jpeg(2, 480, 640), photo_jpeg(3, 640, 480), photo_jpeg(4, 300, 200),
              photo_jpeg(5, 640, 480), photo_jpeg(6, 480, 640)]
    assert model_module._same_size_groups([torch.zeros(3, 480, 640)] * 3) == [[0, 1, 2]]
    with patch.object(model_module, "_GROUP_BYTES", 2 * 3 * 480 * 640):
        assert model_module._same_size_groups([torch.zeros(3, 480, 640)] * 3) == [[0, 1], [2]]
        inputs, thumbs = encoder.decode_jpegs_and_thumbnails(photos, thumbnail_side=128)
    encoder.group_resizes = False
    for photo, got, thumb in zip(photos, inputs, thumbs):
        alone, (alone_thumb,) = encoder.decode_jpegs_and_thumbnails([photo], thumbnail_side=128)
        assert got.shape == (3, encoder.image_size, encoder.image_size) and got.dtype == torch.uint8
        assert torch.equal(got, alone[0])
        assert np.array_equal(thumb, alone_thumb)
    assert [t.shape[:2] for t in thumbs] == [(96, 128), (128, 96), (96, 128), (85, 128), (96, 128), (128, 96)]


def test_encode_images_takes_a_mixed_batch(encoder: ClipEncoder) -> None:
    """A device-decode batch mixes device-decoded JPEG crops with images the decode pool prepared (PNGs:
    uint8 arrays) and full preprocess tensors: every one gets the vector it gets alone, in order."""
    photo = photo_jpeg(7, 640, 480)
    png = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 0)).save(png, format="PNG")
    red = Image.open(png).convert("RGB")
    parts = [encoder.decode_jpegs([photo])[0], encoder.cpu_transform()(red),
             encoder.preprocess(Image.open(io.BytesIO(photo)).convert("RGB")), encoder.cpu_transform()(red)]
    mixed = encoder.encode_images(parts)
    alone = np.concatenate([encoder.encode_images([part]) for part in parts])
    assert np.abs(mixed - alone).max() < 1e-4
    reference = encoder.encode_images([encoder.preprocess(red)])[0]
    assert float(mixed[1] @ reference) > 0.999 and float(mixed[3] @ reference) > 0.999


def test_warm_up_runs_the_paths_requests_take(encoder: ClipEncoder) -> None:
    """warm_up (run by the worker and the server before they report ready) sends images through the
    device decoder, the thumbnail scaling and the image tower, and texts of the full context length
    through the text tower: on a CPU one of each (a GPU runs the batch sizes it is given)."""
    model = encoder._model
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [model.visual.register_forward_hook(lambda m, args, out: seen.append(("image", tuple(args[0].shape)))),
             model.transformer.register_forward_hook(
                 lambda m, args, out: seen.append(("text", tuple(args[0].shape[:2]))))]
    try:
        with patch.object(encoder, "decode_jpegs_and_thumbnails", wraps=encoder.decode_jpegs_and_thumbnails) as decode:
            assert encoder.warm_up(images=32, texts=16, jpegs=True, thumbnail_side=64) > 0
            assert len(decode.call_args.args[0]) == 1 and decode.call_args.kwargs["thumbnail_side"] == 64
            size, context = encoder.image_size, model.positional_embedding.shape[0]
            assert seen == [("image", (1, 3, size, size)), ("text", (1, context))]
            seen.clear()
            encoder.warm_up(images=8)  # no JPEGs asked for: crops straight to the image tower, no text
            assert decode.call_count == 1 and seen == [("image", (1, 3, size, size))]
    finally:
        for hook in hooks:
            hook.remove()


def test_a_failed_warm_up_is_logged_not_raised(encoder: ClipEncoder, caplog: pytest.LogCaptureFixture) -> None:
    """A worker whose device decoder fails at warm-up still starts (its batches fall back to PIL)."""
    with patch.object(encoder, "decode_jpegs_and_thumbnails", side_effect=RuntimeError("no nvJPEG here")):
        assert encoder.warm_up(images=4, jpegs=True) >= 0
    assert "warm-up on cpu failed (RuntimeError: no nvJPEG here)" in caplog.text
