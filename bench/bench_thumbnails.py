"""What thumbnails cost: average bytes per image (storage per million images) and the worker's time to
make one, for WebP and JPEG at the default 256 px, on the test suite's synthetic shapes (64 x 64 PNG)
and on photo-like JPEGs (tests/photos.py, 1024 x 768). The decode is the worker's own (draft mode, as
for the model), so the time shown is the resize + encode that thumbnails add.

    python bench/bench_thumbnails.py [--images 64] [--size 256]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import save, table  # noqa: E402
from clipsearch_core.images import LoadLimits, decode_image  # noqa: E402
from clipsearch_worker.thumbs import ThumbnailSpec, make_thumbnail  # noqa: E402
from tests.photos import photo_jpeg  # noqa: E402
from tests.tinyclip.synthetic import CLASSES, make_image  # noqa: E402


def _synthetic(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        color, shape = CLASSES[i % len(CLASSES)]
        buf = io.BytesIO()
        make_image(color, shape, random.Random(i)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    sets = {"synthetic 64x64 PNG": _synthetic(args.images),
            "photo-like 1024x768 JPEG": [photo_jpeg(i) for i in range(args.images)]}
    limits = LoadLimits()
    rows = []
    for name, images in sets.items():
        decoded = [decode_image(data, limits, draft_size=args.size) for data in images]
        for fmt in ("webp", "jpeg"):
            spec = ThumbnailSpec(size=args.size, format=fmt)
            make_thumbnail(decoded[0], spec)  # warm-up
            sizes, seconds = [], []
            for image in decoded:
                started = time.perf_counter()
                data = make_thumbnail(image, spec)
                seconds.append(time.perf_counter() - started)
                sizes.append(len(data or b""))
            mean = statistics.fmean(sizes)
            rows.append({"images": name, "format": fmt, "mean_bytes": round(mean),
                         "max_bytes": max(sizes), "gb_per_million": round(mean * 1e6 / 1e9, 2),
                         "ms_per_image": round(1000 * statistics.fmean(seconds), 2),
                         "source_mean_bytes": round(statistics.fmean(len(d) for d in images))})
    table(rows, ["images", "format", "mean_bytes", "max_bytes", "gb_per_million", "ms_per_image", "source_mean_bytes"])
    save("thumbnails", {"size": args.size, "images": args.images, "rows": rows})


if __name__ == "__main__":
    main()
