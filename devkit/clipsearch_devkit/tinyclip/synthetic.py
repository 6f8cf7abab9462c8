"""Synthetic "coloured shape" pictures and captions used to train and check the tiny CLIP.

Every picture shows exactly one shape (``SHAPES``) in one colour (``COLORS``) at a
random position, size and rotation on a randomly tinted light/grey background with
a little pixel noise.  The (colour, shape) pair is the picture's class, so retrieval
quality can be measured exactly.  All randomness comes from the ``random.Random``
passed in, so a given seed always yields the same pictures and captions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "green": (30, 150, 45),
    "blue": (30, 70, 215),
    "yellow": (240, 205, 20),
    "purple": (130, 40, 165),
    "orange": (245, 125, 15),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
"""Every (colour, shape) pair; the index in this tuple is the class id."""

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape}",
    "a photo of a {color} {shape}",
    "a {color} {shape} on a plain background",
    "a picture of a {color} {shape}",
    "one {color} {shape}",
    "a drawing of a {color} {shape}",
)

_COLOR_JITTER = 18  # max per-channel deviation of the shape colour
_NOISE_STD = 5.0  # std of the per-pixel Gaussian noise, in 0..255 units


def class_index(color: str, shape: str) -> int:
    """Return the class id of a (colour, shape) pair (its index in ``CLASSES``)."""
    return CLASSES.index((color, shape))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        k, radii = 4, (r,)
    elif shape == "triangle":
        k, radii = 3, (r,)
    elif shape == "star":
        k, radii = 10, (r, r * 0.42)
    else:
        raise ValueError(f"not a polygon shape: {shape!r}")
    pts = []
    for i in range(k):
        a = angle + 2.0 * math.pi * i / k
        rr = radii[i % len(radii)]
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def make_image(color: str, shape: str, rng: random.Random, size: int = 96) -> Image.Image:
    """Draw one ``shape`` in ``color`` on a random light background; deterministic given ``rng``.

    The shape's position, size, rotation (not for circles) and exact shade are random,
    as are the background tint and the pixel noise.  Returns an RGB image ``size`` x ``size``.
    """
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; expected one of {sorted(COLORS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")

    # Light, slightly tinted grey background.
    base = rng.randint(175, 240)
    bg = tuple(max(0, min(255, base + rng.randint(-14, 14))) for _ in range(3))
    # Shape colour with a little jitter so that "red" is a range, not one value.
    fg = tuple(max(0, min(255, v + rng.randint(-_COLOR_JITTER, _COLOR_JITTER))) for v in COLORS[color])

    # Draw at 2x and downsample for anti-aliased edges.
    ss = 2
    big = size * ss
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.17, 0.36) * big  # circumradius
    margin = r * 1.02
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    if shape == "circle":
        rc = r * 0.85  # a circle of the same circumradius looks larger than the polygons
        draw.ellipse((cx - rc, cy - rc, cx + rc, cy + rc), fill=fg)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0.0, 2.0 * math.pi)), fill=fg)
    img = img.resize((size, size), Image.Resampling.BILINEAR)

    # Pixel noise, from a numpy generator seeded by rng (keeps determinism, stays fast).
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    arr = np.asarray(img, dtype=np.float32)
    arr += noise_rng.normal(0.0, _NOISE_STD, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def caption(color: str, shape: str, rng: random.Random) -> str:
    """Return a caption such as ``"a photo of a red circle"``, template chosen by ``rng``."""
    return rng.choice(CAPTION_TEMPLATES).format(color=color, shape=shape)


def iter_dataset(n: int, seed: int, size: int = 96) -> Iterator[tuple[Image.Image, str, str]]:
    """Yield ``n`` random ``(image, color, shape)`` triples; the same ``seed`` gives the same triples."""
    rng = random.Random(seed)
    for _ in range(n):
        color, shape = rng.choice(CLASSES)
        yield make_image(color, shape, rng, size), color, shape


def iter_balanced(per_class: int, seed: int, size: int = 96) -> Iterator[tuple[Image.Image, str, str]]:
    """Yield ``per_class`` random ``(image, color, shape)`` triples for every class, class by class."""
    rng = random.Random(seed)
    for color, shape in CLASSES:
        for _ in range(per_class):
            yield make_image(color, shape, rng, size), color, shape
