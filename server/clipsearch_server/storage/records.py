"""What a store holds and what a collection needs from it: the records, and the `ImageStore` seam.

`SqliteStore` (sqlite.py) implements `ImageStore`; with a shared PostgreSQL store (postgres.py) the
database is the truth and each server's `SqliteStore` is a local mirror of its shard (replication/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from . import fields as typed

__all__ = ["DELETION_MEMORY_MS", "Change", "ImageRecord", "ImageStore", "StoredImage", "StoredRecord", "UpsertResult"]

DELETION_MEMORY_MS = 30 * 24 * 3600 * 1000  # deletions are remembered this long (30 days)


@dataclass(frozen=True)
class ImageRecord:
    """An image to write: id, unit vector (float32, dim), uri, metadata, and when the image was
    submitted for encoding (ms since the Unix epoch; 0 = unknown, never skipped)."""

    id: str
    vector: np.ndarray
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    submitted_at_ms: int = 0
    fields: typed.Fields = field(default_factory=dict)  # validated typed fields, metadata not included
    thumbnail: bytes = b""  # encoded thumbnail; empty = none (an upsert without one removes the stored one)
    thumbnail_mime_type: str = ""


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert did: new (label, vector) pairs to index, stale labels, ids skipped (deleted after submission)."""

    added: list[tuple[int, np.ndarray]]
    stale: list[int]
    skipped: list[str]


@dataclass(frozen=True)
class StoredImage:
    """An image as stored, without its vector."""

    id: str
    label: int
    uri: str
    metadata: dict[str, str]
    fields: typed.Fields = field(default_factory=dict)  # typed fields and metadata as string fields


@dataclass(frozen=True)
class StoredRecord:
    """An image's record as stored, for reading it back (GetRecords): typed fields without the metadata,
    when the store last wrote it, and its unit vector as stored (float32 little-endian) when asked for."""

    id: str
    uri: str
    metadata: dict[str, str]
    fields: typed.Fields  # the typed fields as written, metadata not included
    updated_ms: int  # when this store last wrote the record (ms since the Unix epoch)
    vector: bytes = b""  # the stored unit vector's bytes; empty unless asked for
    submitted_ms: int = 0  # when the image was submitted for encoding (0: unknown, e.g. an import)


@dataclass(frozen=True)
class Change:
    """One replicated change, as the shared store's feed gives it: the image as written, with the label
    the shared store gave it, or a deletion (vector None)."""

    position: int
    id: str
    label: int = -1
    vector: np.ndarray | None = None
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    fields: typed.Fields = field(default_factory=dict)
    thumbnail: bytes = b""  # the image's thumbnail as written with it; empty = none (removes the mirror's)
    thumbnail_mime_type: str = ""
    submitted_ms: int = 0  # when the image was submitted for encoding (0: unknown)


class ImageStore(Protocol):
    """What a collection needs from its store (SQLite `SqliteStore` implements it)."""

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def upsert(self, records: Sequence[ImageRecord]) -> UpsertResult: ...
    def delete(self, ids: Sequence[str], now_ms: int | None = None) -> list[tuple[str, int]]: ...
    def apply(self, changes: Sequence[Change], position: int) -> UpsertResult: ...
    def by_labels(self, labels: Sequence[int]) -> dict[int, StoredImage]: ...
    def labels_where(self, condition: str, params: Sequence[object]) -> np.ndarray: ...
    def thumbnails(self, ids: Sequence[str]) -> dict[str, tuple[bytes, str]]: ...
    def records(self, ids: Sequence[str], vectors: bool = False) -> dict[str, StoredRecord]: ...
    def scroll(self, after: str, limit: int, labels: np.ndarray | None = None,
               vectors: bool = False) -> list[StoredRecord]: ...
    def update_fields(self, ids: Sequence[str], update: typed.Update, now_ms: int | None = None) -> list[str]: ...
    def ids_of(self, labels: Sequence[int]) -> list[str]: ...
    def vector_of(self, image_id: str) -> np.ndarray | None: ...
    def label_of(self, image_id: str) -> int | None: ...
    def next_label(self) -> int: ...
    def live_labels(self) -> np.ndarray: ...
    def count(self) -> int: ...
    def iter_vectors(self, dim: int, start: int = 0, stop: int | None = None,
                     chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
    def close(self) -> None: ...
