"""Request validation: every limit of the public API, and a check for each field.

Each check returns the cleaned value or raises InvalidArgument with a message that names the
field, the value's problem and the limit, so a caller can fix the request.
"""

from __future__ import annotations

import math
from typing import Callable, Container, Mapping, Sequence

import numpy as np

from clipsearch_core.images import is_supported_uri

from .errors import InvalidArgument, NotFound

__all__ = [
    "MAX_ID_CHARS",
    "MAX_K",
    "MAX_METADATA_ENTRIES",
    "MAX_SUBMIT_IMAGES",
    "MAX_TEXT_CHARS",
    "MAX_UPSERT_RECORDS",
    "image_id",
    "image_ids",
    "request_id",
    "k",
    "metadata",
    "missing_records",
    "missing_thumbnails",
    "record_ids",
    "records_missing",
    "text",
    "thumbnails_missing",
    "uri",
    "vector",
]

MAX_K = 1000
MAX_TEXT_CHARS = 1000
MAX_ID_CHARS = 256
MAX_URI_CHARS = 4096
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 256
MAX_METADATA_VALUE_CHARS = 4096
MAX_SUBMIT_IMAGES = 1000
MAX_REQUEST_ID_CHARS = 128
MAX_UPSERT_RECORDS = 4096
MAX_DELETE_IDS = 1000
MAX_FAILURES_LIMIT = 10_000


def k(value: int) -> int:
    if not 1 <= value <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {value}")
    return value


def text(value: str, field: str = "text") -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} must not be empty or only whitespace")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters, the limit is {MAX_TEXT_CHARS}")
    return value.strip()


def image_id(value: str, field: str = "id") -> str:
    if not value:
        raise InvalidArgument(f"{field} must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters, the limit is {MAX_ID_CHARS}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidArgument(f"{field} {value!r} contains control characters")
    return value


def request_id(value: str, field: str = "request_id") -> str:
    """Empty (no deduplication) or 1 to 128 characters without control characters."""
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters, the limit is {MAX_REQUEST_ID_CHARS}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidArgument(f"{field} contains control characters")
    return value


def uri(value: str, field: str = "uri") -> str:
    """A uri a worker or the server reads the image from (see `label_uri` for its other checks)."""
    label_uri(value, field)
    if not is_supported_uri(value):
        raise InvalidArgument(
            f"{field} {value!r} is not supported: use an absolute file path, file://, http:// or https://"
        )
    return value


def label_uri(value: str, field: str = "uri") -> str:
    """A uri kept only as the image's label (with uploaded bytes, or an UpsertVectors record): at most
    MAX_URI_CHARS, without NUL (a PostgreSQL store cannot hold it in text)."""
    if len(value) > MAX_URI_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters, the limit is {MAX_URI_CHARS}")
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL character")
    return value


def metadata(value: Mapping[str, str], field: str = "metadata") -> dict[str, str]:
    if len(value) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"{field} has {len(value)} entries, the limit is {MAX_METADATA_ENTRIES}")
    for key, item in value.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidArgument(f"{field} keys must be 1 to {MAX_METADATA_KEY_CHARS} characters, got {key!r}")
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise InvalidArgument(
                f"{field}[{key!r}] is {len(item)} characters, the limit is {MAX_METADATA_VALUE_CHARS}"
            )
    return dict(value)


def image_ids(values: Sequence[str], limit: int, field: str = "ids") -> list[str]:
    """1 to `limit` valid image ids, each named `field[i]` in an error."""
    count(len(values), limit, field)
    return [image_id(value, f"{field}[{i}]") for i, value in enumerate(values)]


def count(value: int, limit: int, what: str) -> int:
    if value == 0:
        raise InvalidArgument(f"the request holds no {what}")
    if value > limit:
        raise InvalidArgument(f"the request holds {value} {what}, the limit is {limit} per request")
    return value


def vector(data: bytes, dim: int, field: str) -> np.ndarray:
    """Parses a little-endian float32 vector of `dim` components."""
    return vectors([data], dim, lambda _: field)[0]


def vectors(datas: Sequence[bytes], dim: int, field: Callable[[int], str]) -> np.ndarray:
    """Parses little-endian float32 vectors of `dim` components into one (n, dim) array, checked as one
    block (a worker's batch of 256 costs one parse, not 256); field(i) names the i-th in an error."""
    for i, data in enumerate(datas):
        if len(data) != 4 * dim:
            raise InvalidArgument(f"{field(i)} is {len(data)} bytes; a float32 vector of dim {dim} is {4 * dim} bytes")
    array = np.frombuffer(b"".join(datas), dtype="<f4").astype(np.float32).reshape(len(datas), dim)
    finite: np.ndarray = np.asarray(np.isfinite(array).all(axis=1))
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(array, axis=1)
    bad = ~finite | (norms == 0.0) | ~np.isfinite(norms)
    if bad.any():  # the first bad vector, whatever is wrong with it
        i = int(np.argmax(bad))
        if not finite[i]:
            raise InvalidArgument(f"{field(i)} holds NaN or infinite values")
        if norms[i] == 0.0:
            raise InvalidArgument(f"{field(i)} is all zeros")
        raise InvalidArgument(f"{field(i)} is too large to normalize (its length overflows float32); "
                              "send a unit vector")
    return array


def min_score(request: object) -> float | None:
    """The request's optional min_score: None when unset; must be finite."""
    if not request.HasField("min_score"):  # type: ignore[attr-defined]
        return None
    value = float(request.min_score)  # type: ignore[attr-defined]
    if not math.isfinite(value):
        raise InvalidArgument(f"min_score must be a finite number, got {value}")
    return value


def failures_limit(value: int) -> int:
    if value == 0:
        return 100
    if not 0 < value <= MAX_FAILURES_LIMIT:
        raise InvalidArgument(f"limit must be between 0 and {MAX_FAILURES_LIMIT}, got {value}")
    return value


def min_position(value: int, field: str = "min_position") -> int:
    """A read-your-writes position: >= 0 (0 = none)."""
    if value < 0:
        raise InvalidArgument(f"{field} must be >= 0 (a position returned by UpsertVectors or DeleteImages), "
                              f"got {value}")
    return value


# --- thumbnails ----------------------------------------------------------------------------------

MAX_BATCH = 64  # queries per BatchSearch
MAX_EMBED_INPUTS = 64  # inputs per Embed
MAX_THUMBNAIL_BYTES = 256 * 1024
THUMBNAIL_MIME_TYPES = ("image/webp", "image/jpeg", "image/png")
MAX_THUMBNAIL_IDS = 100  # per GetThumbnails call
MAX_K_WITH_THUMBNAILS = 100  # k of a search that asks for inline thumbnails


def thumbnail(data: bytes, mime_type: str, field: str) -> tuple[bytes, str]:
    """A worker's thumbnail: at most MAX_THUMBNAIL_BYTES, of a known image type (empty data: none)."""
    if not data:
        return b"", ""
    if len(data) > MAX_THUMBNAIL_BYTES:
        raise InvalidArgument(f"{field}.data is {len(data)} bytes, the limit is {MAX_THUMBNAIL_BYTES}")
    if mime_type not in THUMBNAIL_MIME_TYPES:
        raise InvalidArgument(f"{field}.mime_type is {mime_type!r}; use one of {', '.join(THUMBNAIL_MIME_TYPES)}")
    return data, mime_type


def _missing(ids: Sequence[str], found: Container[str], allow_missing: bool,
             not_found: Callable[[Sequence[str]], NotFound]) -> list[str]:
    """The ids not in `found`, in order; raises not_found(them) unless allow_missing."""
    missing = [image_id for image_id in ids if image_id not in found]
    if missing and not allow_missing:
        raise not_found(missing)
    return missing


def thumbnails_missing(ids: Sequence[str], found: Container[str], allow_missing: bool) -> list[str]:
    """The ids of a GetThumbnails without a thumbnail; NOT_FOUND naming them unless allow_missing."""
    return _missing(ids, found, allow_missing, missing_thumbnails)


def _shown(ids: Sequence[str], first: int = 10) -> str:
    """The first few of `ids`, quoted, and how many more there are."""
    return ", ".join(repr(m) for m in ids[:first]) + (f" and {len(ids) - first} more" if len(ids) > first else "")


def missing_thumbnails(missing: Sequence[str]) -> NotFound:
    """The NOT_FOUND of a GetThumbnails naming (the first 10 of) the ids without a thumbnail."""
    return NotFound(f"no thumbnail for {_shown(missing)}: unknown or deleted ids, or images indexed with thumbnails "
                    "turned off (set allow_missing to get the others)")


def k_with_thumbnails(value: int, include_thumbnails: bool) -> int:
    """k of a search; at most MAX_K_WITH_THUMBNAILS when it asks for inline thumbnails."""
    k(value)
    if include_thumbnails and value > MAX_K_WITH_THUMBNAILS:
        raise InvalidArgument(f"k is {value}; with include_thumbnails the limit is {MAX_K_WITH_THUMBNAILS} "
                              "(fetch the thumbnails of more results with GetThumbnails)")
    return value


# --- records (RecordService) -------------------------------------------------------------------------

MAX_RECORD_IDS = 1000  # ids per GetRecords call
MAX_RECORD_IDS_WITH_THUMBNAILS = 100  # ids per GetRecords call that asks for thumbnails


def record_ids(values: Sequence[str], include_thumbnails: bool) -> list[str]:
    """The ids of a GetRecords: 1 to MAX_RECORD_IDS valid ids (at most MAX_RECORD_IDS_WITH_THUMBNAILS with
    include_thumbnails), each once, in the order of their first place."""
    ids = image_ids(values, MAX_RECORD_IDS)
    if include_thumbnails and len(ids) > MAX_RECORD_IDS_WITH_THUMBNAILS:
        raise InvalidArgument(f"the request holds {len(ids)} ids; with include_thumbnails the limit is "
                              f"{MAX_RECORD_IDS_WITH_THUMBNAILS} per request")
    return list(dict.fromkeys(ids))


def records_missing(ids: Sequence[str], found: Container[str], allow_missing: bool) -> list[str]:
    """The ids of a GetRecords that are not indexed; NOT_FOUND naming them unless allow_missing."""
    return _missing(ids, found, allow_missing, missing_records)


def missing_records(missing: Sequence[str]) -> NotFound:
    """The NOT_FOUND of a GetRecords naming (the first 10 of) the ids that are not indexed."""
    return NotFound(f"no indexed image has id {_shown(missing)}: unknown or deleted ids, or images not encoded yet "
                    "(set allow_missing to get the others)")


MAX_PAGE_SIZE = 1000  # records per ScrollRecords page
MAX_PAGE_SIZE_WITH_THUMBNAILS = 100  # records per page with include_thumbnails
DEFAULT_PAGE_SIZE = 100
MAX_UPDATE_IDS = 1000  # ids per UpdateRecords call


def page_size(value: int, include_thumbnails: bool) -> int:
    """A ScrollRecords page_size: 0 is DEFAULT_PAGE_SIZE; else 1 to MAX_PAGE_SIZE (to 100 with thumbnails)."""
    limit = MAX_PAGE_SIZE_WITH_THUMBNAILS if include_thumbnails else MAX_PAGE_SIZE
    if value == 0:
        return min(DEFAULT_PAGE_SIZE, limit)
    if not 1 <= value <= limit:
        raise InvalidArgument(f"page_size must be between 1 and {limit}"
                              f"{' with include_thumbnails' if include_thumbnails else ''} (0 = {DEFAULT_PAGE_SIZE}), "
                              f"got {value}")
    return value
