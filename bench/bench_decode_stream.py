"""The worker's device-decode overlap alone, with the decoder on the model's CUDA stream and on a stream of
its own (`ClipEncoder.own_decode_stream`, the worker's --decode-stream): a thread decodes the next batch
of JPEGs on the device (and scales its thumbnails) while the main thread runs the image tower on the
current one, as the worker's device-decode thread and main loop do, without Redis, files, a server or
the decode pool's threads (so it shows the most the stream can give; bench_feed.py measures the whole
worker). Each setting first runs once untimed, which checks every crop byte for byte and every vector
against the same batches decoded and encoded one after the other; then timed rounds alternate the
settings (A B, B A, ...), each vector checked again (the lowest cosine): a stream that let the model read
crops before they were written, or reuse their memory too early, shows there. It also checks that the
device decoder turns JPEGs of each EXIF orientation upright as PIL does.

    python bench/bench_decode_stream.py --device cuda [--model ViT-B-32 --pretrained none] [--batches 8]
        [--batch 256] [--thumbnail 256] [--rounds 4] [--backend auto|torchcodec|torchvision]

On the CPU there is no stream: both settings run the same code (a rehearsal of the script).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import save, table  # noqa: E402


def overlapped(encoder: Any, batches: list[list[bytes]], thumbnail: int, backend: str,
               reference_crops: list[Any] | None = None) -> tuple[float, np.ndarray, int]:
    """Seconds to decode and encode every batch with decoding one batch ahead in a thread, the vectors,
    and (with reference_crops, an untimed check) how many crops differ from them."""
    import torch

    ready: "queue.Queue[Any]" = queue.Queue(maxsize=1)  # one batch decoded ahead, as in the worker

    def decode_ahead() -> None:
        try:
            for datas in batches:
                ready.put(encoder.decode_jpegs_and_thumbnails(datas, backend, thumbnail_side=thumbnail)[0])
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread
            ready.put(exc)

    started = time.perf_counter()
    thread = threading.Thread(target=decode_ahead, daemon=True)
    thread.start()
    vectors, differ = [], 0
    for i in range(len(batches)):
        crops = ready.get()
        if isinstance(crops, BaseException):
            raise crops
        vectors.append(encoder.encode_images(crops))
        if reference_crops is not None:
            differ += sum(not torch.equal(c.cpu(), r) for c, r in zip(crops, reference_crops[i]))
    thread.join()
    return time.perf_counter() - started, np.concatenate(vectors), differ


def misoriented(encoder: Any, backend: str) -> int:
    """How many of 8 JPEGs, one per EXIF orientation, the device decoder does not turn upright as PIL does
    (shape, and pixels within a mean of 8 levels: another decoder's rounding, not a turn or a mirror)."""
    import io

    import torch
    from PIL import Image

    from clipsearch_core import model as model_module
    from clipsearch_core.images import LoadLimits, decode_image

    wrong = 0
    for orientation in range(1, 9):
        pixels = np.random.default_rng(orientation).integers(0, 256, (48, 80, 3), dtype=np.uint8)
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.fromarray(pixels.repeat(4, axis=0).repeat(4, axis=1)).save(buffer, "JPEG", quality=95, exif=exif)
        upright = np.asarray(decode_image(buffer.getvalue(), LoadLimits())).astype(int)
        raw = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        decoded = model_module._decode_on_device([raw], backend, encoder.device)[0].cpu()
        wrong += decoded.shape != (3, *upright.shape[:2]) or \
            float(np.abs(decoded.permute(1, 2, 0).numpy().astype(int) - upright).mean()) >= 8
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--thumbnail", type=int, default=256, help="thumbnail side scaled on the device (0: off)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backend", default="auto", choices=("auto", "torchcodec", "torchvision"))
    parser.add_argument("--name", default="decode-stream")
    args = parser.parse_args()

    import clipsearch_core  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads
    from clipsearch_core.model import ModelSpec, load_encoder
    from clipsearch_devkit.photos import photo_jpeg

    encoder = load_encoder(ModelSpec(args.model, args.pretrained, args.device))
    unique = [photo_jpeg(seed, args.width, args.height) for seed in range(64)]
    photos = [unique[(i * 7) % len(unique)] for i in range(args.batches * args.batch)]
    batches = [photos[i:i + args.batch] for i in range(0, len(photos), args.batch)]
    encoder.warm_up(images=args.batch, jpegs=True, thumbnail_side=args.thumbnail)
    encoder.own_decode_stream = False  # the reference: decode, then encode, one batch after the other
    crops = [encoder.decode_jpegs(datas, args.backend) for datas in batches]
    reference = np.concatenate([encoder.encode_images(batch) for batch in crops])
    reference_crops = [[c.cpu() for c in batch] for batch in crops]
    del crops
    setting = {False: "model's", True: "own"}
    rows, checks = [], {}
    checks["EXIF orientations not upright (of 8)"] = misoriented(encoder, args.backend)
    print(checks, flush=True)
    for own in (False, True):  # untimed: the allocator's pools grow, and every crop is compared
        encoder.own_decode_stream = own
        _, vectors, differ = overlapped(encoder, batches, args.thumbnail, args.backend, reference_crops)
        checks[setting[own]] = {"crops differing": differ,
                                "lowest cosine": float(np.sum(vectors * reference, axis=1).min())}
        print(setting[own], checks[setting[own]], flush=True)
    for round_ in range(args.rounds):
        for own in ((False, True) if round_ % 2 == 0 else (True, False)):
            encoder.own_decode_stream = own
            seconds, vectors, _ = overlapped(encoder, batches, args.thumbnail, args.backend)
            cosines = np.sum(vectors * reference, axis=1)
            rows.append({"decode stream": setting[own], "round": round_, "img/s": len(photos) / seconds,
                         "lowest cosine": float(cosines.min()),
                         "vectors off (< 0.9999)": int(np.sum(cosines < 0.9999))})
            print(rows[-1], flush=True)
    median = {name: float(np.median([r["img/s"] for r in rows if r["decode stream"] == name]))
              for name in setting.values()}
    alone, shared = median["own"], median["model's"]
    print(f"\n== device decode beside the model, {args.model} on {encoder.device}, backend {args.backend}, "
          f"{args.batches} batches of {args.batch} {args.width}x{args.height} JPEGs, thumbnail {args.thumbnail}: "
          f"median {alone:.0f} img/s on its own stream, {shared:.0f} on the model's: {alone / shared:.2f}x ==")
    table(rows, ["decode stream", "round", "img/s", "lowest cosine", "vectors off (< 0.9999)"])
    save(args.name, {"args": vars(args), "rows": rows, "checks": checks, "own/model's": alone / shared,
                     "device": encoder.device})
    if any(c["crops differing"] for c in checks.values() if isinstance(c, dict)) or \
            any(r["vectors off (< 0.9999)"] for r in rows):
        raise SystemExit("some crops or vectors differ from decoding and encoding one batch after the other")
    if checks["EXIF orientations not upright (of 8)"]:
        raise SystemExit("the device decoder does not turn every EXIF orientation upright as PIL does")


if __name__ == "__main__":
    main()
