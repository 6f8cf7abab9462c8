"""Reading image bytes from their source (inline, allowed file roots, http) and decoding them to RGB.

Everything that can go wrong with an image raises ImageLoadError with a reason a user can act on
(never a Python repr); callers (the worker, the server's ImageSearch) turn that into a failed job or
INVALID_ARGUMENT (UNAVAILABLE when transient). URLs are fetched by `fetch.fetch_http`, which refuses
loopback, link-local and private addresses unless `LoadLimits.network` allows them.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import urllib.parse
import warnings
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError
from .fetch import NetworkPolicy, fetch_http
from .settings import default

__all__ = ["ImageLoadError", "LoadLimits", "NetworkPolicy", "check_header", "decode_image", "is_jpeg", "is_supported_uri", "read_uri"]

_HTTP_SCHEMES = ("http://", "https://")
_FILE_SCHEME = "file://"


@dataclass(frozen=True)
class LoadLimits:
    """Limits applied to every image, whatever its source.

    max_bytes: largest encoded image accepted (bytes).
    max_pixels: largest decoded size (width * height); bigger ones are refused as decompression bombs.
    allowed_roots: folders from which file paths may be read; empty refuses all file paths.
    http_timeout_s: seconds an http(s) URL may take in all (connect, redirects, headers, body).
    network: which addresses http(s) URLs may reach.
    """

    max_bytes: int = default("--max-image-bytes")
    max_pixels: int = default("--max-pixels")
    allowed_roots: tuple[Path, ...] = field(default_factory=tuple)
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
        return cls(max_bytes=args.max_image_bytes, max_pixels=args.max_pixels, allowed_roots=roots,
                   http_timeout_s=args.http_timeout, network=NetworkPolicy.parse(args.allow_network))


def is_supported_uri(uri: str) -> bool:
    """True for the location forms images can be read from: absolute path, file://, http(s)://."""
    return uri.startswith(_HTTP_SCHEMES + (_FILE_SCHEME,)) or Path(uri).is_absolute()


def read_uri(uri: str, limits: LoadLimits) -> bytes:
    """Reads the encoded bytes of the image at `uri`, enforcing the allowed roots and size limit."""
    if uri.startswith(_HTTP_SCHEMES):
        return _read_http(uri, limits)
    path_text = urllib.parse.unquote(urllib.parse.urlparse(uri).path) if uri.startswith(_FILE_SCHEME) else uri
    return _read_file(Path(path_text), limits)


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
    return ImageLoadError(f"path is outside the allowed roots ({_roots(limits)}): {path}")


def _roots(limits: LoadLimits) -> str:
    return ", ".join(str(r) for r in limits.allowed_roots) or "none configured"


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
        raise ImageLoadError(f"cannot decode image: not a recognised image format (first bytes {_preview(data)})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"cannot decode image: too many pixels, over the limit of {limits.max_pixels} "
                             "(decompression bomb?)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"cannot decode image: unreadable header{_detail(exc)}") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageLoadError(f"image is {width}x{height} pixels, over the limit of {limits.max_pixels} (decompression bomb?)")
    return image


def check_header(data: bytes, limits: LoadLimits) -> None:
    """Reads only the header: refuses empty, oversized, unreadable or too many pixels, without decoding."""
    _open(data, limits)


def decode_image(data: bytes, limits: LoadLimits, draft_size: int | None = None,
                 longest_side: int | None = None) -> Image.Image:
    """Decodes encoded image bytes to an RGB image: first frame, EXIF orientation applied.

    draft_size: for JPEGs, let the decoder scale by 1/2, 1/4 or 1/8 in the DCT domain while both
    sides stay >= draft_size (much less work for large photos; the model's resize does the rest).
    longest_side: the same, while the longest side stays >= longest_side (a thumbnail's bound).
    """
    image = _open(data, limits)
    try:
        image.seek(0)
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        elif longest_side and image.format == "JPEG":
            scale = min(1.0, longest_side / max(image.size))
            image.draft("RGB", (max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale))))
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"cannot decode image: too many pixels, over the limit of {limits.max_pixels} "
                             "(decompression bomb?)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"cannot decode image: truncated or corrupt {image.format or 'image'}{_detail(exc)}") from exc


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|0x[0-9a-fA-F]{6,}")


def _detail(exc: BaseException) -> str:
    """PIL's own words about a broken file (" (image file is truncated)"), without object reprs or addresses."""
    text = " ".join(_REPR.sub("", str(exc)).split()).strip(" :,")
    return f" ({text[:200]})" if text else ""


def _preview(data: bytes) -> str:
    """The first bytes of a file, as text when they are printable ('hello wo...'), else in hex."""
    head = data[:8]
    more = "..." if len(data) > len(head) else ""
    if all(32 <= b < 127 for b in head):
        return f"'{head.decode('ascii')}{more}'"
    return head.hex(" ") + more


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")
