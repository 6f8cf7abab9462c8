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
        read_uri("http://127.0.0.1:9/none.jpg",
                 LoadLimits(http_timeout_s=2, network=NetworkPolicy.parse(["127.0.0.0/8"])))


@pytest.mark.parametrize("data,message", [  # what the bytes seem to be, never the bytes (a file's, a URL body's)
    (b"hello world, I am text", "cannot decode image: not a recognised image format (it looks like text)"),
    (b"\x00\x01\x02\x03\xfe\xff\x10\x11\x12", "cannot decode image: not a recognised image format"),
    (b"GIF8", "cannot decode image: not a recognised image format (it looks like text)"),
    (b"<!DOCTYPE html><html><body>secret</body></html>", "cannot decode image: not a recognised image format "
                                                          "(it looks like an HTML page)"),
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


# Issue 25: shapes whose decode or resize would cost far more than their pixel count says.
@pytest.mark.parametrize("size", [(16, 4_000_000), (1, 64_000_000), (4_000_000, 16), (21, 1)])
def test_extreme_aspect_ratios_are_refused_from_the_header(size: tuple[int, int]) -> None:
    """A 7.8 KB PNG of 16 x 4,000,000 pixels is within --max-pixels, but the model's resize enlarges the
    short side to its input: billions of pixels (6 GB in the server). 1 x 64,000,000 overflowed in PIL."""
    data = encoded(Image.new("1", size), "PNG")
    assert len(data) < 200_000
    for check in (lambda: decode_image(data, LIMITS), lambda: check_header(data, LIMITS)):
        with pytest.raises(ImageLoadError) as info:
            check()
        assert str(info.value) == (f"image is {size[0]}x{size[1]} pixels: its sides' ratio is over the limit "
                                   "of 20 to 1 (--max-aspect-ratio)")
    assert decode_image(encoded(Image.new("RGB", (20, 1)), "PNG"), LIMITS).size == (20, 1)  # at the limit: read


def test_concurrent_decodes_stay_within_the_pixel_budget() -> None:
    """However many threads decode at once, the pixels held (decode and the caller's work) stay within
    one --max-pixels image; without the budget, 8 threads would hold 8 images."""
    import threading
    import time

    from clipsearch_core.images import BUDGET, decoded

    data = encoded(Image.new("RGB", (1500, 1000), (10, 200, 30)), "PNG")
    limits = LoadLimits(max_pixels=3_000_000)  # two of these images at most
    BUDGET.peak = 0
    holding: list[int] = []
    lock = threading.Lock()
    most = [0]

    def work() -> None:
        with decoded(data, limits) as image:
            with lock:
                holding.append(1)
                most[0] = max(most[0], len(holding))
            time.sleep(0.05)  # the caller's resize
            image.resize((64, 64))
            with lock:
                holding.pop()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert BUDGET.peak <= 3_000_000 and most[0] == 2, (BUDGET.peak, most[0])
    # An image larger than the whole budget is still decoded (alone), and a thread holding an image
    # may decode another (a thumbnail) without waiting for itself.
    big = LoadLimits(max_pixels=1_000_000, max_aspect_ratio=20)
    small = encoded(Image.new("RGB", (1000, 1000)), "PNG")
    with decoded(small, big) as first:
        with decoded(small, big) as second:
            assert first.size == second.size == (1000, 1000)


def test_hard_links_and_file_url_hosts(tmp_path: Path) -> None:
    """A hard link inside a root may lead to a file outside it (the path check cannot see that): such
    files are refused unless allowed. file://host/path names another machine: refused, not read locally."""
    import os

    root = tmp_path / "images"
    root.mkdir()
    data = encoded(Image.new("RGB", (4, 4)), "PNG")
    (tmp_path / "secret.png").write_bytes(data)
    os.link(tmp_path / "secret.png", root / "linked.png")
    (root / "plain.png").write_bytes(data)
    limits = LoadLimits(allowed_roots=(root,))
    with pytest.raises(ImageLoadError, match="has 2 hard links.*--allow-hard-links"):
        read_uri(str(root / "linked.png"), limits)
    assert read_uri(str(root / "linked.png"), LoadLimits(allowed_roots=(root,), allow_hard_links=True)) == data
    assert read_uri(f"file://{root / 'plain.png'}", limits) == data
    assert read_uri(f"file://localhost{root / 'plain.png'}", limits) == data
    with pytest.raises(ImageLoadError, match="file URL names a host \\('evil.example'\\)"):
        read_uri(f"file://evil.example{root / 'plain.png'}", limits)
    with pytest.raises(ImageLoadError) as info:
        read_uri(str(tmp_path / "secret.png"), limits)
    assert str(root) not in str(info.value)  # the roots are not shown to the caller


def test_a_host_that_does_not_exist_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """NXDOMAIN is an answer, not an outage: the job fails instead of being retried for ever; a resolver
    that does not answer (EAI_AGAIN) stays transient. (Narrow unit test: the resolver's answer is forced.)"""
    import socket

    limits = LoadLimits(http_timeout_s=2)
    for code, transient in ((socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)):
        def fail(*args: object, code: int = code, **kw: object) -> None:
            raise socket.gaierror(code, "forced")
        monkeypatch.setattr(socket, "getaddrinfo", fail)
        with pytest.raises(ImageLoadError, match="cannot resolve host") as info:
            read_uri("http://photos.example.com/a.jpg", limits)
        assert info.value.transient is transient
