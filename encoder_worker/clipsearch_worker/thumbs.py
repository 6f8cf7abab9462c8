"""Thumbnails: the small preview of each image that the worker sends with its vector.

A thumbnail is the decoded image scaled down so that its longest side is at most `size` pixels (never
enlarged), encoded as WebP (default) or JPEG. It is made from the image the worker decodes for the
model when that is large enough (so it costs one resize and one small encode), else from a JPEG draft
decode at the thumbnail's size (decode.thumbnail_of); the model's own decode is never changed. With
`--device-decode` the device scales the image it decoded for the model, and the CPU only encodes it
(thumbnail_from_array). Options: --thumbnail-size (0 turns thumbnails off), --thumbnail-format,
--thumbnail-quality (clipsearch_core.settings).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

__all__ = ["MIME_TYPES", "ThumbnailSpec", "make_thumbnail", "thumbnail_from_array"]

MIME_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg"}

# Cost per 1024x768 photo on one core (bench/bench_thumbnails.py): a box
# reduction by whole factors before the Lanczos filter (0.13 ms instead of 1.9 ms from a 512x384 draft
# decode), and libwebp's method 2 (1.1 ms, 3.0 KB) instead of its default 4 (2.8 ms, 2.9 KB).
REDUCING_GAP = 1.0
WEBP_METHOD = 2


@dataclass(frozen=True)
class ThumbnailSpec:
    """How thumbnails are made: longest side in pixels (0 = no thumbnails), format and quality (1-100)."""

    size: int = 256
    format: str = "webp"
    quality: int = 75

    @property
    def enabled(self) -> bool:
        return self.size > 0

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]

    @classmethod
    def from_args(cls, args: Any) -> "ThumbnailSpec":
        """From a command line parsed by `settings.parse("worker", ...)`."""
        return cls(size=max(0, args.thumbnail_size), format=args.thumbnail_format,
                   quality=min(100, max(1, args.thumbnail_quality)))


def make_thumbnail(image: Image.Image, spec: ThumbnailSpec) -> bytes | None:
    """The encoded thumbnail of a decoded RGB image, or None when thumbnails are off."""
    if not spec.enabled:
        return None
    width, height = image.size
    scale = min(1.0, spec.size / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    buf = io.BytesIO()
    if spec.format == "webp":
        image.save(buf, format="WEBP", quality=spec.quality, method=WEBP_METHOD)
    else:
        image.save(buf, format="JPEG", quality=spec.quality, optimize=True)
    return buf.getvalue()


def thumbnail_from_array(array: Any, spec: ThumbnailSpec) -> bytes | None:
    """The encoded thumbnail of an (H, W, 3) uint8 RGB array already scaled on the model's device
    (`--device-decode`: ClipEncoder.decode_jpegs_and_thumbnails), so only the encode is left."""
    return make_thumbnail(Image.fromarray(array, "RGB"), spec)
