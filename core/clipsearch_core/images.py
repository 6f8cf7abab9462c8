"""Reading image bytes from their source (inline, allowed file roots, http) and decoding them to RGB.

Everything that can go wrong with an image raises ImageLoadError with a reason a user can act on
(never a Python repr); callers (the worker, the server's ImageSearch) turn that into a failed job or
INVALID_ARGUMENT (UNAVAILABLE when transient). URLs are fetched by `fetch.fetch_http`, which refuses
loopback, link-local and private addresses unless `LoadLimits.network` allows them.

Memory: an image's cost is bounded before it is decoded. The header gives its size: more than
`max_pixels` pixels, or sides in a ratio over `max_aspect_ratio` (the model's resize enlarges the short
side to its input, so a 16 x 4,000,000 image would become billions of pixels), are refused. Decoding
and what the caller does with the decoded image (`decoded`) hold pixels of a per-process budget of
`max_pixels` (`DecodeBudget`): however many threads decode at once, the pixels decoded at any moment
stay within one maximal image (an image alone larger than the rest of the budget waits for it).
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import threading
import urllib.parse
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError
from .fetch import NetworkPolicy, fetch_http
from .settings import default

__all__ = ["DecodeBudget", "ImageLoadError", "LoadLimits", "NetworkPolicy", "check_header", "decode_image", "decoded",
           "is_jpeg", "is_supported_uri", "read_uri"]

_HTTP_SCHEMES = ("http://", "https://")
_FILE_SCHEME = "file://"


@dataclass(frozen=True)
class LoadLimits:
    """Limits applied to every image, whatever its source.

    max_bytes: largest encoded image accepted (bytes).
    max_pixels: largest decoded size (width * height); bigger ones are refused as decompression bombs.
        Also the per-process budget of pixels being decoded at once (DecodeBudget).
    max_aspect_ratio: largest longest side / shortest side.
    allowed_roots: folders from which file paths may be read; empty refuses all file paths.
    allow_hard_links: read files with more than one hard link (one inside the roots may be a link to a file
        outside them, which the path check cannot see).
    http_timeout_s: seconds an http(s) URL may take in all (connect, redirects, headers, body).
    network: which addresses http(s) URLs may reach.
    """

    max_bytes: int = default("--max-image-bytes")
    max_pixels: int = default("--max-pixels")
    max_aspect_ratio: float = default("--max-aspect-ratio")
    allowed_roots: tuple[Path, ...] = field(default_factory=tuple)
    allow_hard_links: bool = default("--allow-hard-links")
    http_timeout_s: float = default("--http-timeout")
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    _root_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:  # the roots as resolved path prefixes, once (not per image)
        prefixes = tuple(os.path.join(os.path.realpath(root), "") for root in self.allowed_roots)
        object.__setattr__(self, "_root_prefixes", prefixes)

    def allows(self, real_path: str) -> bool:
        """True if a resolved path lies under one of the allowed roots."""
        return real_path.startswith(self._root_prefixes) or os.path.join(real_path, "") in self._root_prefixes

    @classmethod
    def from_args(cls, args: Any) -> "LoadLimits":
        """From the image options of a parsed server or worker command line (`clipsearch_core.settings`)."""
        roots = tuple(Path(r).expanduser().resolve() for r in args.allowed_root if r)
        return cls(max_bytes=args.max_image_bytes, max_pixels=args.max_pixels, max_aspect_ratio=args.max_aspect_ratio,
                   allowed_roots=roots, allow_hard_links=args.allow_hard_links, http_timeout_s=args.http_timeout,
                   network=NetworkPolicy.parse(args.allow_network))


def is_supported_uri(uri: str) -> bool:
    """True for the location forms images can be read from: absolute path, file://, http(s)://."""
    return uri.startswith(_HTTP_SCHEMES + (_FILE_SCHEME,)) or Path(uri).is_absolute()


def read_uri(uri: str, limits: LoadLimits) -> bytes:
    """Reads the encoded bytes of the image at `uri`, enforcing the allowed roots and size limit."""
    if uri.startswith(_HTTP_SCHEMES):
        return _read_http(uri, limits)
    if uri.startswith(_FILE_SCHEME):
        parts = urllib.parse.urlparse(uri)
        if parts.netloc not in ("", "localhost"):  # file://host/path names another machine's file
            raise ImageLoadError(f"file URL names a host ({parts.netloc!r}): only file:///path and "
                                 "file://localhost/path are read")
        return _read_file(Path(urllib.parse.unquote(parts.path)), limits)
    return _read_file(Path(uri), limits)


def _read_file(path: Path, limits: LoadLimits) -> bytes:
    """The bytes of a regular file under the allowed roots. The file is opened once and its location
    checked on the open file (the kernel's path for the descriptor), so a link changed between the check
    and the read cannot lead outside the roots, and no Python walk of the path runs per image. Only
    regular files are opened (a FIFO would block, a device could act on open). A path that resolves
    outside the roots is reported as such whatever else is wrong with it (no probing of other files)."""
    if not path.is_absolute():
        raise ImageLoadError(f"file path must be absolute: {path}")
    if "\0" in str(path):
        raise ImageLoadError("file path contains a NUL character")
    try:
        fd, info = _open_regular(str(path))
    except OSError:
        # As the path resolves textually (realpath: ".." after a missing folder cancels it): outside the
        # roots is all a caller learns of such a path; inside, that resolved path is what is read.
        real = os.path.realpath(path)
        if not limits.allows(real):
            raise _outside(path, limits) from None
        try:
            fd, info = _open_regular(real)
        except OSError as exc:
            raise ImageLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if not limits.allows(_opened_path(fd, path, info)):
            raise _outside(path, limits)
        if info.st_nlink > 1 and not limits.allow_hard_links:
            raise ImageLoadError(f"file has {info.st_nlink} hard links, and one may lie outside the allowed roots "
                                 f"(allow such files with --allow-hard-links): {path}")
        if info.st_size > limits.max_bytes:
            raise ImageLoadError(f"image file is {info.st_size} bytes, over the limit of {limits.max_bytes}: {path}")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(info.st_size + 1)  # not max_bytes: a buffer of that size per image
            if len(data) > info.st_size:  # it grew since the fstat
                data += file.read(limits.max_bytes + 1 - len(data))
        if len(data) > limits.max_bytes:
            raise ImageLoadError(f"image file is over the limit of {limits.max_bytes} bytes: {path}")
        return data
    except OSError as exc:
        raise ImageLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """A blocking read descriptor of the regular file at `path`, and its fstat; OSError for anything else. Opened
    without blocking (a FIFO swapped in after the stat would block the open) and made blocking again
    once the descriptor is known to be a regular file's."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped for something else since the stat
            raise OSError("not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _opened_path(fd: int, path: Path, info: os.stat_result) -> str:
    """The resolved path of an open file: one readlink on Linux. Elsewhere realpath, accepted only if
    it leads to the very file that is open (else a link changed in between: nowhere allowed)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
        try:
            same = os.path.samestat(os.stat(real), info)
        except OSError:
            same = False
        return real if same else ""


def _outside(path: Path, limits: LoadLimits) -> ImageLoadError:
    # The roots themselves are not named: callers of a search may not know the server's folders.
    setting = "--allowed-root" if limits.allowed_roots else "none is set: --allowed-root"
    return ImageLoadError(f"path is outside the allowed roots ({setting}): {path}")


def _read_http(url: str, limits: LoadLimits) -> bytes:
    data = fetch_http(url, limits.network, limits.http_timeout_s, limits.max_bytes)
    if len(data) > limits.max_bytes:
        raise ImageLoadError(f"image at {url} is over the limit of {limits.max_bytes} bytes")
    return data


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _open(data: bytes, limits: LoadLimits) -> Image.Image:
    """Opens the image lazily (header only) after checking its encoded and declared decoded size."""
    if not data:
        raise ImageLoadError("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageLoadError(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:  # its message is PIL's "cannot identify image file <_io.BytesIO ...>"
        raise ImageLoadError(f"cannot decode image: not a recognised image format{_looks_like(data)}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"cannot decode image: too many pixels, over the limit of {limits.max_pixels} "
                             "(decompression bomb?)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"cannot decode image: unreadable header{_detail(exc)}") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageLoadError(f"image is {width}x{height} pixels, over the limit of {limits.max_pixels} "
                             "(decompression bomb?)")
    if min(width, height) < 1:
        raise ImageLoadError(f"image is {width}x{height} pixels: it has no pixels")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ImageLoadError(f"image is {width}x{height} pixels: its sides' ratio is over the limit of "
                             f"{limits.max_aspect_ratio:g} to 1 (--max-aspect-ratio)")
    return image


def check_header(data: bytes, limits: LoadLimits) -> None:
    """Reads only the header: refuses empty, oversized, unreadable or too many pixels, without decoding."""
    _open(data, limits)


class DecodeBudget:
    """Pixels being decoded (and worked on) at once in this process, at most `capacity`: `hold(n)` waits
    until n more fit. An image larger than the whole budget takes it all (waits until nothing else
    holds any). Re-entrant per thread: a thread that already holds pixels (a thumbnail decoded again
    while the model's copy is held) takes more without waiting, so it can never wait for itself."""

    def __init__(self) -> None:
        self._free = threading.Condition()
        self._used = 0
        self._held = threading.local()
        self.peak = 0  # the most pixels held at once (for tests and benchmarks)

    @contextmanager
    def hold(self, pixels: int, capacity: int) -> Iterator[None]:
        pixels = max(0, min(pixels, capacity))
        depth = getattr(self._held, "depth", 0)
        with self._free:
            if depth == 0:
                self._free.wait_for(lambda: self._used == 0 or self._used + pixels <= capacity)
            self._used += pixels
            self.peak = max(self.peak, self._used)
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            with self._free:
                self._used -= pixels
                self._free.notify_all()


BUDGET = DecodeBudget()  # this process's


def decode_image(data: bytes, limits: LoadLimits, draft_size: int | None = None,
                 longest_side: int | None = None) -> Image.Image:
    """Decodes encoded image bytes to an RGB image: first frame, EXIF orientation applied. The budget is
    held while decoding only: a caller that goes on working on a large image uses `decoded` instead.

    draft_size: for JPEGs, let the decoder scale by 1/2, 1/4 or 1/8 in the DCT domain while both
    sides stay >= draft_size (much less work for large photos; the model's resize does the rest).
    longest_side: the same, while the longest side stays >= longest_side (a thumbnail's bound).
    """
    with decoded(data, limits, draft_size, longest_side) as image:
        return image


@contextmanager
def decoded(data: bytes, limits: LoadLimits, draft_size: int | None = None,
            longest_side: int | None = None) -> Iterator[Image.Image]:
    """`decode_image` as a context: the image's pixels are held in this process's DecodeBudget from
    before its decode until the block ends (the caller's resize, crop and thumbnail included)."""
    image = _open(data, limits)
    try:
        image.seek(0)
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        elif longest_side and image.format == "JPEG":
            scale = min(1.0, longest_side / max(image.size))
            image.draft("RGB", (max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale))))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"cannot decode image: corrupt {image.format or 'image'}{_detail(exc)}") from exc
    with BUDGET.hold(image.width * image.height, limits.max_pixels):
        yield _load(image, limits)


def _load(image: Image.Image, limits: LoadLimits) -> Image.Image:
    try:
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"cannot decode image: too many pixels, over the limit of {limits.max_pixels} "
                             "(decompression bomb?)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(
            f"cannot decode image: truncated or corrupt {image.format or 'image'}{_detail(exc)}") from exc


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|0x[0-9a-fA-F]{6,}")


def _detail(exc: BaseException) -> str:
    """PIL's own words about a broken file (" (image file is truncated)"), without object reprs or addresses."""
    text = " ".join(_REPR.sub("", str(exc)).split()).strip(" :,")
    return f" ({text[:200]})" if text else ""


def _looks_like(data: bytes) -> str:
    """What bytes that are not an image seem to be, in a word ("it looks like HTML"), never the bytes
    themselves: a caller may not read a file or a URL's body through an error message."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return " (it looks like an HTML page)"
    if head.startswith((b"{", b"[")):
        return " (it looks like JSON)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:512]):
        return " (it looks like text)"
    return ""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")
