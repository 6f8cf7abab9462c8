"""Contact sheets: search results drawn as one image (a grid of thumbnails with rank, score and name),
for sharing in a chat or a bug report. Used by `clipsearch search ... --sheet FILE`.

Needs Pillow (the `ui` extra); the rest of the client does not, so this module is imported only when
a sheet is asked for. The thumbnails come inline with the results (include_thumbnails).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .types import SearchResult

__all__ = ["CELL", "contact_sheet", "save_sheet"]

CELL = 256  # pixels: the square each thumbnail is fitted into
_PAD = 8
_CAPTION = 40  # pixels under each thumbnail: rank and score, then the image's name
_BACKGROUND = (255, 255, 255)
_EMPTY = (235, 235, 235)  # a cell's background


def _thumbnail(result: SearchResult) -> Image.Image | None:
    if not result.thumbnail:
        return None
    try:
        image = Image.open(io.BytesIO(result.thumbnail))
        image.load()
    except (OSError, ValueError):
        return None
    return ImageOps.contain(image.convert("RGB"), (CELL, CELL))  # fills the cell: small ones are enlarged


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """`text`, shortened with an ellipsis in the middle to fit one cell's width."""
    if draw.textlength(text, font=font) <= CELL:
        return text
    keep = len(text)
    while keep > 4 and draw.textlength(text[: keep // 2] + "…" + text[-(keep // 2):], font=font) > CELL:
        keep -= 2
    return text[: keep // 2] + "…" + text[-(keep // 2):]


def contact_sheet(results: Sequence[SearchResult], columns: int | None = None, title: str = "") -> Image.Image:
    """The results, best first, in a grid (left to right, top to bottom) with "#rank  score" and the
    image's uri (or id) under each; `title` on top. Results without a thumbnail get a grey square."""
    count = max(1, len(results))
    columns = columns or min(5, max(1, math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    font = ImageFont.load_default(size=14)
    head = 28 if title else 0
    width = columns * (CELL + _PAD) + _PAD
    height = head + rows * (CELL + _CAPTION + _PAD) + _PAD
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_PAD, 6), _fit(draw, title, font), fill=(0, 0, 0), font=font)
    for rank, result in enumerate(results, 1):
        row, col = divmod(rank - 1, columns)
        x = _PAD + col * (CELL + _PAD)
        y = head + _PAD + row * (CELL + _CAPTION + _PAD)
        thumb = _thumbnail(result)
        draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=_EMPTY)
        if thumb is None:
            draw.text((x + 8, y + CELL // 2 - 8), "no thumbnail", fill=(90, 90, 90), font=font)
        else:
            sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2))
        draw.text((x, y + CELL + 2), f"#{rank}  {result.score:.4f}", fill=(0, 0, 0), font=font)
        draw.text((x, y + CELL + 20), _fit(draw, result.uri or result.id, font), fill=(80, 80, 80), font=font)
    return sheet


def save_sheet(results: Sequence[SearchResult], path: str | Path, title: str = "") -> Path:
    """Writes the contact sheet of `results` to `path` (format from its suffix: .jpg, .png, .webp)."""
    out = Path(path)
    image = contact_sheet(results, title=title)
    if out.suffix.lower() in (".jpg", ".jpeg"):
        image.save(out, quality=88)
    else:
        image.save(out)
    return out
