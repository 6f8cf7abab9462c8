"""Plain value types returned by the client (never protobuf objects)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Deletion", "EmbedInput", "Embedding", "Embeddings",
           "Failure", "ImageInput", "IndexStats", "Progress", "Query", "QueueStatus", "Record",
           "RecordPage", "RecordsDeleted", "SearchPage", "SearchResult", "Submission", "Term", "Thumbnail",
           "UpdateResult", "WorkerStatus"]


@dataclass(frozen=True)
class SearchResult:
    """One match. `score` is cosine similarity in [-1, 1], higher is better."""

    id: str
    score: float
    uri: str
    metadata: dict[str, str] = field(default_factory=dict)
    # Typed fields: str, int, float, bool, datetime (UTC) or list of str; metadata entries included as str.
    fields: dict[str, Any] = field(default_factory=dict)
    # With collapse_threshold: ids of the near duplicates left out in favour of this result.
    collapsed_ids: list[str] = field(default_factory=list)
    # The image's thumbnail (WebP or JPEG bytes) when the search asked for it and the image has one.
    thumbnail: bytes = b""
    thumbnail_mime_type: str = ""


@dataclass(frozen=True)
class Thumbnail:
    """An indexed image's thumbnail: encoded bytes and their MIME type ("image/webp", "image/jpeg")."""

    id: str
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class Record:
    """An indexed image as stored (`get_records`).

    `fields` holds the typed fields as given (str, int, float, bool, datetime in UTC, list of str), without
    the metadata entries (those are in `metadata`). `updated_at_ms`: when the answering server's store
    last wrote it (ms since the Unix epoch); `submitted_at_ms` is 0 (not stored yet). `model` and `dim`:
    the collection's model. `vector` (only when asked for): the stored unit vector, `dim` little-endian
    float32 values (`floats()` unpacks it; numpy: `numpy.frombuffer(record.vector, "<f4")`).
    `thumbnail` (only when asked for, and the image has one)."""

    id: str
    uri: str
    metadata: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    updated_at_ms: int = 0
    submitted_at_ms: int = 0
    model: str = ""
    dim: int = 0
    vector: bytes = b""
    thumbnail: Thumbnail | None = None

    def floats(self) -> list[float]:
        """The vector as a list of floats (empty when it was not asked for)."""
        return list(struct.unpack(f"<{len(self.vector) // 4}f", self.vector))


class SearchPage(list):  # type: ignore[type-arg]
    """A page of results (a list of SearchResult, best first) and the token of the next page.

    `next_page_token` is "" on the last page; else pass it as `page_token` with the same query to get
    the next page. When a router answered: how many shards there are (`shards_total`; 0 when a server
    answered directly), how many answered, and whether the results are partial (some shard missing)."""

    def __init__(self, results: Any = (), next_page_token: str = "", shards_total: int = 0,
                 shards_answered: int = 0, partial: bool = False) -> None:
        super().__init__(results)
        self.next_page_token = next_page_token
        self.shards_total = shards_total
        self.shards_answered = shards_answered
        self.partial = partial


class Deletion(tuple):  # type: ignore[type-arg]
    """What DeleteImages did: unpacks as (deleted ids, ids not found), and `position`, the store position
    after the delete (pass it as `min_position` of a search, on any replica, to see the delete; 0 with
    the SQLite store)."""

    deleted: list[str]
    not_found: list[str]
    position: int

    def __new__(cls, deleted: list[str], not_found: list[str], position: int = 0) -> "Deletion":
        self = super().__new__(cls, (deleted, not_found))
        self.deleted, self.not_found, self.position = deleted, not_found, position
        return self


class RecordPage(list):  # type: ignore[type-arg]
    """A page of a scroll (`scroll_page`): a list of Record in ascending id order, and `next_cursor`, to pass
    back as `cursor` (with the same filter) for the next page; "" on the last page."""

    def __init__(self, records: Any = (), next_cursor: str = "") -> None:
        super().__init__(records)
        self.next_cursor = next_cursor


@dataclass(frozen=True)
class UpdateResult:
    """What UpdateRecords did: `updated` images (matched and written, also those that already had the
    values), the requested ids that are not indexed (`not_found`, by ids only), and `position`, the
    read-your-writes token (0 with the SQLite store)."""

    updated: int
    not_found: list[str] = field(default_factory=list)
    position: int = 0


@dataclass(frozen=True)
class RecordsDeleted:
    """What DeleteRecords (`delete_where`) did: the number of images `deleted`, and `position`, the
    read-your-writes token (0 with the SQLite store)."""

    deleted: int
    position: int = 0


@dataclass(frozen=True)
class Term:
    """One weighted term of a multi-term query: exactly one of text, image (bytes), uri, id or vector
    (floats, the model's dim), and a weight (non-zero, within +-100; negative steers away)."""

    text: str | None = None
    image: bytes | None = None
    uri: str | None = None
    id: str | None = None
    vector: Any = None  # a sequence of floats, or float32 little-endian bytes
    weight: float = 1.0


@dataclass(frozen=True)
class Query:
    """One query of `batch_search`: exactly one of text, image, uri, id, vector or terms, with its own
    k, filter (`where`), min_score, page_token and collapse_threshold."""

    text: str | None = None
    image: bytes | None = None
    uri: str | None = None
    id: str | None = None
    vector: Any = None  # a sequence of floats, or float32 little-endian bytes
    terms: list[Term] | None = None
    k: int = 10
    where: Any = None  # a clipsearch.v1.types_pb2.Filter (see clipsearch.where)
    min_score: float | None = None
    page_token: str = ""
    collapse_threshold: float | None = None


@dataclass(frozen=True)
class EmbedInput:
    """One input of `embed`: exactly one of a text (1 to 1000 characters), encoded image bytes, or an image
    location (uri) the server reads. `embed` also takes a plain str (a text) or bytes (an image)."""

    text: str | None = None
    image: bytes | None = None
    uri: str | None = None


@dataclass(frozen=True)
class Embedding:
    """One input's unit vector: `dim` little-endian float32 values (`floats()` unpacks it; numpy:
    `numpy.frombuffer(embedding.vector, "<f4")`)."""

    vector: bytes

    def floats(self) -> list[float]:
        """The vector as a list of floats."""
        return list(struct.unpack(f"<{len(self.vector) // 4}f", self.vector))


@dataclass(frozen=True)
class Embeddings:
    """What `embed` returned: the model that computed the vectors (the collection's: the name and dimension
    that GetIndexStats reports) and one embedding per input, in the order of the inputs."""

    model: str
    dim: int
    embeddings: list[Embedding]

    def floats(self) -> list[list[float]]:
        """Every vector as a list of floats, in the order of the inputs."""
        return [e.floats() for e in self.embeddings]


@dataclass(frozen=True)
class ImageInput:
    """An image to index: bytes (`image`) or a location (`uri`), with an optional id and metadata.

    With bytes, `uri` is only recorded (e.g. the path the file came from).
    """

    image: bytes = b""
    uri: str = ""
    id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # Typed fields for filters: str, int, float, bool, datetime (a timestamp; naive = UTC) or list of str.
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Submission:
    """What SubmitImages returned: the batch id and the id of each image, in order."""

    batch_id: str
    ids: list[str]


@dataclass(frozen=True)
class Progress:
    """Ingestion counts; pending: submitted and not yet finished (queued or being encoded)."""

    submitted: int
    pending: int
    indexed: int
    failed: int

    @property
    def done(self) -> bool:
        """True when every submitted image is indexed or failed."""
        return self.pending == 0


@dataclass(frozen=True)
class Failure:
    id: str
    uri: str
    reason: str
    batch_id: str
    failed_at_ms: int
    attempts: int = 1


@dataclass(frozen=True)
class IndexStats:
    count: int
    model: str
    dim: int
    index_type: str
    hnsw_m: int
    ef_construction: int
    ef_search: int
    stale_entries: int
    # The source of truth ("sqlite" or "postgresql"), and with PostgreSQL the position this server
    # (through a router: the least caught-up shard asked) has applied, the newest it knows of, and how
    # long it has been behind, in ms.
    store_kind: str = ""
    applied_position: int = 0
    store_position: int = 0
    lag_ms: int = 0
    # The index kind the collection was created with (--index), the faiss spec serving now, its training
    # state ("not-needed", "waiting-for-data", "training", "trained"), and its measured RAM (bytes, and
    # per vector) and bytes of exact vectors on disk.
    index_kind: str = ""
    index_spec: str = ""
    training: str = ""
    memory_bytes: int = 0
    bytes_per_vector: float = 0.0
    disk_bytes: int = 0
    # This server's shard I of N (through a router: N, and how many shards answered).
    shard_index: int = 0
    shard_count: int = 1
    shards_answered: int = 0


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    last_seen_ms: int
    alive: bool
    processed: int
    device: str
    model: str


@dataclass(frozen=True)
class QueueStatus:
    """jobs: not finished; in_flight: delivered to a worker, not finished; lag: not yet delivered to a worker."""

    jobs: int
    in_flight: int
    lag: int
    queued_bytes: int
    workers: list[WorkerStatus]
