"""Image reading and decoding: every bad input becomes ImageLoadError with a clear reason."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from clipsearch_core.images import ImageLoadError, LoadLimits, NetworkPolicy, check_header, decode_image, read_uri


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


LIMITS = LoadLimits()


def test_zero_bytes_and_text_file() -> None:
    with pytest.raises(ImageLoadError, match="empty"):
        decode_image(b"", LIMITS)
    with pytest.raises(ImageLoadError, match="cannot decode image"):
        decode_image(b"this is a text file named .jpg\n", LIMITS)


def test_truncated_jpeg() -> None:
    data = encoded(Image.new("RGB", (256, 256), (200, 10, 10)), "JPEG")
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_decompression_bomb_refused() -> None:
    data = encoded(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        decode_image(data, LoadLimits(max_pixels=1_000_000))


@pytest.mark.parametrize(
    "image,fmt",
    [
        (Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG"),
        (Image.new("I;16", (20, 10), 40000), "PNG"),
        (Image.new("P", (20, 10), 3), "PNG"),
        (Image.new("L", (20, 10), 128), "PNG"),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 128)), "PNG"),
        (Image.new("RGB", (20, 10), (0, 0, 255)), "WEBP"),
        (Image.new("RGB", (20, 10), (0, 255, 0)), "GIF"),
    ],
)
def test_modes_decode_to_rgb(image: Image.Image, fmt: str) -> None:
    out = decode_image(encoded(image, fmt), LIMITS)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_exif_orientation_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encoded(image, "JPEG", exif=exif), LIMITS)
    assert out.size == (20, 40)


def test_paths_only_under_allowed_roots(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(encoded(Image.new("RGB", (4, 4)), "PNG"))
    (tmp_path / "secret.png").write_bytes(b"x")
    limits = LoadLimits(allowed_roots=(root,))
    assert read_uri(str(root / "a.png"), limits).startswith(b"\x89PNG")
    assert read_uri(f"file://{root / 'a.png'}", limits).startswith(b"\x89PNG")
    with pytest.raises(ImageLoadError, match="outside the allowed roots"):
        read_uri(str(root / ".." / "secret.png"), limits)
    with pytest.raises(ImageLoadError, match="outside the allowed roots"):
        read_uri(str(root / "a.png"), LoadLimits())
    with pytest.raises(ImageLoadError, match="cannot read"):
        read_uri(str(root / "missing.png"), limits)


def test_oversized_file_and_unreachable_url(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"0" * 2000)
    with pytest.raises(ImageLoadError, match="over the limit of 1000"):
        read_uri(str(tmp_path / "big.png"), LoadLimits(max_bytes=1000, allowed_roots=(tmp_path,)))
    with pytest.raises(ImageLoadError, match="cannot fetch"):
        read_uri("http://127.0.0.1:9/none.jpg", LoadLimits(http_timeout_s=2, network=NetworkPolicy.parse(["127.0.0.0/8"])))


@pytest.mark.parametrize("data,message", [
    (b"hello world, I am text", "cannot decode image: not a recognised image format (first bytes 'hello wo...')"),
    (b"\x00\x01\x02\x03\xfe\xff\x10\x11\x12", "cannot decode image: not a recognised image format "
                                              "(first bytes 00 01 02 03 fe ff 10 11...)"),
    (b"GIF8", "cannot decode image: not a recognised image format (first bytes 'GIF8')"),
])
def test_undecodable_message_names_the_problem(data: bytes, message: str) -> None:
    """PIL says "cannot identify image file <_io.BytesIO object at 0x...>": users get what is wrong instead."""
    for check in (lambda: decode_image(data, LIMITS), lambda: check_header(data, LIMITS)):
        with pytest.raises(ImageLoadError) as info:
            check()
        assert str(info.value) == message


@pytest.mark.parametrize("data", [
    b"this is a text file named .jpg\n",
    encoded(Image.new("RGB", (256, 256), (200, 10, 10)), "JPEG")[:600],
    encoded(Image.new("RGB", (256, 256), (200, 10, 10)), "PNG")[:60],
    b"\x89PNG\r\n\x1a\n" + b"x" * 30,
    b"",
])
def test_no_reprs_or_addresses_in_messages(data: bytes) -> None:
    with pytest.raises(ImageLoadError) as info:
        decode_image(data, LIMITS)
    message = str(info.value)
    assert "<_io." not in message and "0x" not in message and " object at " not in message, message


def test_truncated_image_names_its_format() -> None:
    data = encoded(Image.new("RGB", (256, 256), (200, 10, 10)), "JPEG")
    with pytest.raises(ImageLoadError, match="^cannot decode image: truncated or corrupt JPEG"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_paths_are_checked_where_they_lead_and_only_regular_files_are_read(tmp_path: Path) -> None:
    """A link under a root that leads outside is refused, one outside that leads inside is read; a FIFO
    under a root is refused at once (reading it would block the decode thread for good); a path outside
    the roots is reported as outside whether or not it exists (no probing of other folders)."""
    import os
    import threading

    root = tmp_path / "images"
    root.mkdir()
    data = encoded(Image.new("RGB", (4, 4)), "PNG")
    (root / "a.png").write_bytes(data)
    (tmp_path / "secret.png").write_bytes(data)
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "alias").symlink_to(root)
    os.mkfifo(root / "pipe.png")
    limits = LoadLimits(allowed_roots=(root,))
    assert read_uri(str(tmp_path / "alias" / "a.png"), limits) == data
    # ".." after a missing folder or a file: resolved as text, as before, so nothing is learnt of them
    for detour in ("missing", "secret.png"):
        assert read_uri(str(tmp_path / detour / ".." / "images" / "a.png"), limits) == data
    with pytest.raises(ImageLoadError, match="NUL"):
        read_uri(str(root / "a\0.png"), limits)
    for outside in ("escape.png", "../secret.png", "../missing.png"):
        with pytest.raises(ImageLoadError, match="outside the allowed roots"):
            read_uri(str(root / outside), limits)
    raised: list[BaseException] = []

    def read_fifo() -> None:
        try:
            read_uri(str(root / "pipe.png"), limits)
        except ImageLoadError as exc:
            raised.append(exc)

    reader = threading.Thread(target=read_fifo, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # the old read blocked here: unblock it so that the test can end
        with open(root / "pipe.png", "wb"):
            pass
    assert not reader.is_alive() and "not a regular file" in str(raised[0])
