"""Per-stage rates of the ingest pipeline, each measured alone on the same images in one run: CPU
decode + preprocess in 1..N processes (PIL draft mode, what the worker does), device decode +
preprocess (torchvision's nvJPEG path and TorchCodec's, when installed), the host-to-device copy of
a preprocessed batch, and the model's batched forward pass. The slowest stage bounds what one
worker can reach; `docs/performance.md` compares these with the end-to-end figure of bench_ingest.

    python bench/bench_stages.py [--model ViT-B-32 --pretrained none] [--device cuda] [--images 512]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import clipsearch_core  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import save, table  # noqa: E402
from clipsearch_core.images import LoadLimits, decode_image  # noqa: E402
from clipsearch_core.model import ModelSpec, load_encoder  # noqa: E402
from clipsearch_devkit.photos import photo_jpeg  # noqa: E402

_WORKER_ENCODER: Any = None


def _init_decoder(model: str, pretrained: str) -> None:
    global _WORKER_ENCODER
    torch.set_num_threads(1)
    _WORKER_ENCODER = load_encoder(ModelSpec(model, pretrained, "cpu"), threads=1)


def _decode_chunk(datas: list[bytes]) -> int:
    enc = _WORKER_ENCODER
    for d in datas:
        enc.preprocess(decode_image(d, LoadLimits(), enc.image_size))
    return len(datas)


def cpu_decode_rate(args: argparse.Namespace, photos: list[bytes], processes: int) -> float:
    photos = photos[:256 * processes]
    chunks = [photos[i:i + 16] for i in range(0, len(photos), 16)]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init_decoder,
                             initargs=(args.model, args.pretrained)) as pool:
        list(pool.map(_decode_chunk, chunks[:processes]))  # warm every process
        t = time.perf_counter()
        done = sum(pool.map(_decode_chunk, chunks))
    return done / (time.perf_counter() - t)


def timed_rate(step: Callable[[list[bytes]], Any], photos: list[bytes], batch: int, sync: bool) -> float:
    step(photos[:batch])  # warm-up
    if sync:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for start in range(0, len(photos), batch):
        step(photos[start:start + batch])
    if sync:
        torch.cuda.synchronize()
    return len(photos) / (time.perf_counter() - t)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--unique", type=int, default=64, help="distinct photos generated (repeated to --images)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--processes", default="1,2", help="CPU decode process counts to try")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--name", default="stages")
    args = parser.parse_args()

    encoder = load_encoder(ModelSpec(args.model, args.pretrained, args.device))
    cuda = encoder.device.startswith("cuda")
    unique = [photo_jpeg(i, args.width, args.height) for i in range(args.unique)]
    photos = [unique[i % len(unique)] for i in range(args.images)]
    rows: list[dict[str, Any]] = []

    def row(stage: str, rate: float, note: str = "") -> None:
        rows.append({"stage": stage, "img/s": rate, "ms/img": 1000 / rate, "note": note})
        print(f"{stage}: {rate:.1f} img/s {note}", flush=True)

    # The model alone, on preprocessed tensors already on the device.
    tensors = [encoder.preprocess(decode_image(p, LoadLimits(), encoder.image_size)) for p in unique]
    on_device = torch.stack([tensors[i % len(tensors)] for i in range(args.batch)]).to(encoder.device)
    encoder.encode_images(on_device)
    if cuda:
        torch.cuda.synchronize()
    reps = max(1, args.images // args.batch)
    t = time.perf_counter()
    for _ in range(reps):
        encoder.encode_images(on_device)
    row("model forward (tensors on device)", reps * args.batch / (time.perf_counter() - t), f"batch {args.batch}")

    # The worker's call: a list of CPU tensors stacked, pinned, copied and (uint8) normalized on the device.
    images = [decode_image(p, LoadLimits(), encoder.image_size) for p in unique]
    for kind, prep in (("float32", encoder.preprocess), ("uint8", encoder.preprocess_uint8)):
        batch = [prep(images[i % len(images)]) for i in range(args.batch)]
        encoder.encode_images(batch)
        t = time.perf_counter()
        for _ in range(reps):
            encoder.encode_images(batch)
        row(f"encode_images from CPU {kind} crops", reps * args.batch / (time.perf_counter() - t),
            f"batch {args.batch}, stack + copy + forward")

    if cuda:  # host-to-device copy of one preprocessed float32 batch from pinned memory
        host = torch.stack([tensors[i % len(tensors)] for i in range(args.batch)]).pin_memory()
        host.to(encoder.device, non_blocking=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            host.to(encoder.device, non_blocking=True)
        torch.cuda.synchronize()
        rate = 10 * args.batch / (time.perf_counter() - t)
        row("host-to-device copy (float32, pinned)", rate, f"{host.nbytes / 1e6:.0f} MB/batch")

    cores = os.cpu_count() or 1
    for n in [int(x) for x in args.processes.split(",") if int(x) <= cores]:
        row(f"CPU decode+preprocess, {n} process(es)", cpu_decode_rate(args, photos, n), "PIL draft mode")

    reference = encoder.encode_images(tensors)
    for backend in ("torchvision", "torchcodec"):
        def step(datas: list[bytes], backend: str = backend) -> Any:
            return encoder.decode_jpegs(datas, backend=backend)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io's, measured on purpose
                rate = timed_rate(step, photos, args.batch, cuda)
                faithful = cosine(encoder.encode_images(step(unique)), reference)
            row(f"device decode+preprocess ({backend})", rate, f"on {encoder.device}, cosine {faithful:.4f}")
        except Exception as exc:  # noqa: BLE001 - report a missing/broken decoder, keep the other figures
            print(f"{backend} failed: {exc}")

    print(f"\n== pipeline stages, {args.model} ({args.pretrained}), device {encoder.device}, "
          f"{args.width}x{args.height} JPEGs ~{sum(map(len, unique)) / len(unique) / 1024:.0f} KB ==")
    table(rows, ["stage", "img/s", "ms/img", "note"])
    save(args.name, {"model": args.model, "device": encoder.device, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
