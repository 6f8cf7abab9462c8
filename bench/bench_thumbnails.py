"""What thumbnails cost: average bytes per image (storage per million images) and the worker's time to
make one, for WebP and JPEG at the default 256 px, on the test suite's synthetic shapes (64 x 64 PNG)
and on photo-like JPEGs (clipsearch_devkit.photos, 1024 x 768). Two times per image: from the image the worker
decoded for the model (draft mode; the CPU path: resize + encode) and from the bytes (the
`--device-decode` path before the device scaled thumbnails: draft decode + resize + encode), and from an
array the device already scaled (`--device-decode` now: the encode alone).
The settings of clipsearch_worker.thumbs are compared with the earlier ones (Lanczos without the box
reduction, libwebp method 4, a draft decode bounded by both sides) in the same run, rounds
interleaved, medians reported.

    python bench/bench_thumbnails.py [--images 64] [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import save, table  # noqa: E402
from clipsearch_core.images import LoadLimits, decode_image  # noqa: E402
from clipsearch_devkit.data import png_bytes  # noqa: E402
from clipsearch_devkit.photos import photo_jpeg  # noqa: E402
from clipsearch_devkit.tinyclip.synthetic import CLASSES, make_image  # noqa: E402
from clipsearch_worker import thumbs  # noqa: E402
from clipsearch_worker.thumbs import ThumbnailSpec, make_thumbnail, thumbnail_from_array  # noqa: E402


def _synthetic(n: int) -> list[bytes]:
    return [png_bytes(make_image(*CLASSES[i % len(CLASSES)], random.Random(i))) for i in range(n)]


# name: (reducing gap, WebP method, draft decode from bytes bounded by the longest side, else both sides)
SETTINGS = {"now": (thumbs.REDUCING_GAP, thumbs.WEBP_METHOD, True),
            "before (gap 2, method 4, both sides)": (2.0, 4, False)}


def make_small(image: Image.Image, side: int) -> Image.Image:
    """The image scaled to a longest side of `side` (never enlarged), as the device does it."""
    scale = min(1.0, side / max(image.size))
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BICUBIC)


def timed(images: list, make: "callable") -> tuple[float, list[int]]:  # type: ignore[valid-type]
    """Mean ms per image and the thumbnails' sizes."""
    make(images[0])  # warm-up
    sizes = []
    started = time.perf_counter()
    for image in images:
        sizes.append(len(make(image) or b""))
    return 1000 * (time.perf_counter() - started) / len(images), sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sets = {"synthetic 64x64 PNG": _synthetic(args.images),
            "photo-like 1024x768 JPEG": [photo_jpeg(i) for i in range(args.images)]}
    limits = LoadLimits()
    rows = []
    for name, images in sets.items():
        decoded = [decode_image(data, limits, draft_size=args.size) for data in images]
        scaled = [np.asarray(make_small(image, args.size)) for image in decoded]  # what the device hands over
        for fmt in ("webp", "jpeg"):
            spec = ThumbnailSpec(size=args.size, format=fmt)
            times: dict[str, dict[str, list[float]]] = {k: {"image": [], "bytes": [], "array": []} for k in SETTINGS}
            sizes: dict[str, list[int]] = {}
            for _ in range(args.rounds):
                for setting, (gap, method, longest) in SETTINGS.items():
                    thumbs.REDUCING_GAP, thumbs.WEBP_METHOD = gap, method
                    ms, sizes[setting] = timed(decoded, lambda image: make_thumbnail(image, spec))
                    times[setting]["image"].append(ms)
                    draft = {"longest_side": spec.size} if longest else {"draft_size": spec.size}
                    ms, _ = timed(images, lambda data: make_thumbnail(decode_image(data, limits, **draft), spec))
                    times[setting]["bytes"].append(ms)
                    ms, _ = timed(scaled, lambda array: thumbnail_from_array(array, spec))
                    times[setting]["array"].append(ms)
            thumbs.REDUCING_GAP, thumbs.WEBP_METHOD, _ = SETTINGS["now"]
            for setting in SETTINGS:
                mean = statistics.fmean(sizes[setting])
                rows.append({"images": name, "format": fmt, "settings": setting, "mean_bytes": round(mean),
                             "max_bytes": max(sizes[setting]), "gb_per_million": round(mean * 1e6 / 1e9, 2),
                             "ms_from_decoded": round(statistics.median(times[setting]["image"]), 2),
                             "ms_from_bytes": round(statistics.median(times[setting]["bytes"]), 2),
                             "ms_from_device_array": round(statistics.median(times[setting]["array"]), 2),
                             "source_mean_bytes": round(statistics.fmean(len(d) for d in images))})
    table(rows, ["images", "format", "settings", "mean_bytes", "max_bytes", "gb_per_million", "ms_from_decoded",
                 "ms_from_bytes", "ms_from_device_array", "source_mean_bytes"])
    save("thumbnails", {"size": args.size, "images": args.images, "rows": rows})


if __name__ == "__main__":
    main()
