"""Photo-like JPEGs for the tests and the benchmarks: smooth gradients, shapes and sensor-like noise at
camera resolutions."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo_jpeg(seed: int, width: int = 1024, height: int = 768, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        f1, f2 = rng.uniform(1, 12, 2)
        channels.append(128 + 60 * np.sin(f1 * x / width * 3.14 + a) * np.cos(f2 * y / height * 3.14 + b) + 40 * c)
    arr = np.stack(channels, axis=2)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(20, min(width, height) / 3)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=color)
        else:
            draw.rectangle([x0 - r, y0 - r / 2, x0 + r, y0 + r / 2], fill=color)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
