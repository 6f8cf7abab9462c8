"""The Python clients: `Client` (sync) and `AsyncClient` (asyncio), with the same methods.

Each method builds a `_Call` (which RPC, the request, how to read the reply into plain dataclasses);
the two clients differ only in how they invoke it. Every call carries a deadline and the bearer
token; gRPC errors become `ClipsearchError` subclasses.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Generic, Iterable, Iterator, Mapping, Sequence, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .connection import DEFAULT_SERVER, Connection
from .errors import InvalidArgumentError, UnavailableError, from_rpc_error
from .fields import from_values, to_values
from .types import (
    Deletion,
    Embedding,
    Embeddings,
    EmbedInput,
    Failure,
    ImageInput,
    IndexStats,
    Progress,
    Query,
    QueueStatus,
    Record,
    RecordPage,
    RecordsDeleted,
    SearchPage,
    SearchResult,
    Submission,
    Term,
    Thumbnail,
    UpdateResult,
    WorkerStatus,
)
from .v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    ingest_service_pb2 as ingest_pb,
    ingest_service_pb2_grpc as ingest_grpc,
    record_service_pb2 as record_pb,
    record_service_pb2_grpc as record_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)

__all__ = ["DEFAULT_SERVER", "AsyncClient", "Client"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Call(Generic[T]):
    service: str  # "search", "ingest", "index" or "record"
    method: str
    request: Any
    parse: Callable[[Any], T]


def _stubs(channel: Any) -> dict[str, Any]:
    return {  # grpcio-tools generates the stubs' constructors without annotations
        "search": search_grpc.SearchServiceStub(channel),  # type: ignore[no-untyped-call]
        "ingest": ingest_grpc.IngestServiceStub(channel),  # type: ignore[no-untyped-call]
        "index": index_grpc.IndexServiceStub(channel),  # type: ignore[no-untyped-call]
        "record": record_grpc.RecordServiceStub(channel),  # type: ignore[no-untyped-call]
    }


def _results(reply: Any, counts: Any = None) -> SearchPage:
    """A page of matches, with the next page's token and, through a router, the shard counts (of `counts`:
    the reply itself, or for a BatchSearch page the whole BatchSearchResponse)."""
    counts = reply if counts is None else counts
    return SearchPage([SearchResult(r.id, float(r.score), r.uri, dict(r.metadata), from_values(r.fields),
                                    list(r.collapsed_ids), r.thumbnail, r.thumbnail_mime_type) for r in reply.results],
                      reply.next_page_token, counts.shards_total, counts.shards_answered, counts.partial)


def _text_search(text: str, k: int, where: types_pb2.Filter | None = None, min_score: float | None = None,
                 page_token: str = "", collapse_threshold: float | None = None, include_thumbnails: bool = False,
                 min_position: int = 0, forbid_partial: bool = False) -> _Call[SearchPage]:
    request = search_pb.TextSearchRequest(text=text, k=k, filter=where, min_score=min_score, page_token=page_token,
                                          collapse_threshold=collapse_threshold, include_thumbnails=include_thumbnails,
                                          min_position=min_position, forbid_partial=forbid_partial)
    return _Call("search", "TextSearch", request, _results)


def _image_search(image: bytes | None, uri: str | None, image_id: str | None, k: int,
                  where: types_pb2.Filter | None = None, min_score: float | None = None, page_token: str = "",
                  collapse_threshold: float | None = None, include_thumbnails: bool = False, min_position: int = 0,
                  forbid_partial: bool = False) -> _Call[SearchPage]:
    given: dict[str, Any] = {name: value for name, value in (("image", image), ("uri", uri), ("id", image_id))
                             if value is not None}
    if len(given) != 1:
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of image, uri or id")
    request = search_pb.ImageSearchRequest(k=k, filter=where, min_score=min_score, page_token=page_token,
                                           collapse_threshold=collapse_threshold, include_thumbnails=include_thumbnails,
                                           min_position=min_position, forbid_partial=forbid_partial, **given)
    return _Call("search", "ImageSearch", request, _results)


def _thumbnails(ids: Sequence[str], allow_missing: bool) -> _Call[dict[str, Thumbnail]]:
    def parse(reply: Any) -> dict[str, Thumbnail]:
        return {t.id: Thumbnail(t.id, t.thumbnail.data, t.thumbnail.mime_type) for t in reply.thumbnails}

    request = search_pb.GetThumbnailsRequest(ids=list(ids), allow_missing=allow_missing)
    return _Call("search", "GetThumbnails", request, parse)


def _record(r: Any) -> Record:
    thumbnail = Thumbnail(r.id, r.thumbnail.data, r.thumbnail.mime_type) if r.HasField("thumbnail") else None
    return Record(r.id, r.uri, dict(r.metadata), from_values(r.fields), r.updated_at_ms, r.submitted_at_ms,
                  r.model.name, r.model.dim, r.vector, thumbnail)


def _get_records(ids: Sequence[str], include_vectors: bool, include_thumbnails: bool, allow_missing: bool,
                 min_position: int) -> _Call[list[Record]]:
    if isinstance(ids, str):
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "ids must be a sequence of ids, not one string")
    request = record_pb.GetRecordsRequest(ids=list(ids), include_vectors=include_vectors,
                                          include_thumbnails=include_thumbnails, allow_missing=allow_missing,
                                          min_position=min_position)
    return _Call("record", "GetRecords", request, lambda reply: [_record(r) for r in reply.records])


def _count(where: types_pb2.Filter | None, min_position: int) -> _Call[int]:
    request = record_pb.CountRecordsRequest(filter=where, min_position=min_position)
    return _Call("record", "CountRecords", request, lambda reply: int(reply.count))


def _embed_input(i: int, item: EmbedInput | str | bytes) -> search_pb.EmbedInput:
    if isinstance(item, str):
        return search_pb.EmbedInput(text=item)
    if isinstance(item, (bytes, bytearray)):
        return search_pb.EmbedInput(image=bytes(item))
    if not isinstance(item, EmbedInput):
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"inputs[{i}]: give an EmbedInput, a str (a "
                                   f"text) or bytes (an image), not {type(item).__name__}")
    given = {name: getattr(item, name) for name in ("text", "image", "uri") if getattr(item, name) is not None}
    if len(given) != 1:
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"inputs[{i}]: give exactly one of text, image "
                                   "or uri")
    return search_pb.EmbedInput(**given)


def _embed(inputs: Sequence[EmbedInput | str | bytes]) -> _Call[Embeddings]:
    def parse(reply: Any) -> Embeddings:
        return Embeddings(reply.model.name, reply.model.dim, [Embedding(e.vector) for e in reply.embeddings])

    if isinstance(inputs, (str, bytes, bytearray)):
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "inputs must be a sequence of inputs, not one str or bytes: embed([text])")
    request = search_pb.EmbedRequest(inputs=[_embed_input(i, item) for i, item in enumerate(inputs)])
    return _Call("search", "Embed", request, parse)


# --- RecordService: scroll, update and delete by filter ---

SCROLL_PAGE = 1000  # records per ScrollRecords page (the API's limit) ...
SCROLL_PAGE_THUMBNAILS = 100  # ... and with thumbnails


def _scroll_request(where: types_pb2.Filter | None, cursor: str, page_size: int | None, include_vectors: bool,
                    include_thumbnails: bool, min_position: int) -> record_pb.ScrollRecordsRequest:
    if page_size is None:
        page_size = SCROLL_PAGE_THUMBNAILS if include_thumbnails else SCROLL_PAGE
    return record_pb.ScrollRecordsRequest(filter=where, cursor=cursor, page_size=page_size,
                                          include_vectors=include_vectors, include_thumbnails=include_thumbnails,
                                          min_position=min_position)


def _scroll(where: types_pb2.Filter | None, cursor: str, page_size: int | None, include_vectors: bool,
            include_thumbnails: bool, min_position: int) -> _Call[RecordPage]:
    request = _scroll_request(where, cursor, page_size, include_vectors, include_thumbnails, min_position)
    return _Call("record", "ScrollRecords", request,
                 lambda reply: RecordPage([_record(r) for r in reply.records], reply.next_cursor))


def _update(ids: Sequence[str] | None, where: types_pb2.Filter | None, set_fields: Mapping[str, Any] | None,
            set_metadata: Mapping[str, str] | None, unset: Iterable[str], replace: bool) -> _Call[UpdateResult]:
    """ValueError (before any call) unless exactly one of ids and where is given, or for a value that is
    not a field type."""
    if (ids is None) == (where is None):
        raise ValueError("update: give exactly one of ids and where")
    if isinstance(ids, str):
        raise ValueError("update: ids must be a sequence of ids, not one string")
    if isinstance(unset, str):
        raise ValueError("update: unset must be a sequence of keys, not one string")
    request = record_pb.UpdateRecordsRequest(ids=list(ids or ()), filter=where,
                                             set_fields=to_values(set_fields or {}),
                                             set_metadata=dict(set_metadata or {}), unset=list(unset),
                                             replace=replace)
    return _Call("record", "UpdateRecords", request,
                 lambda r: UpdateResult(int(r.updated), list(r.not_found), int(r.position)))


def _delete_where(where: types_pb2.Filter | None, delete_all: bool) -> _Call[RecordsDeleted]:
    request = record_pb.DeleteRecordsRequest(filter=where, all=delete_all)
    return _Call("record", "DeleteRecords", request, lambda r: RecordsDeleted(int(r.deleted), int(r.position)))


def _vector_bytes(vector: Any) -> bytes:
    """float32 little-endian bytes of a vector given as bytes or a sequence of floats."""
    if isinstance(vector, (bytes, bytearray)):
        return bytes(vector)
    values = [float(x) for x in vector]
    return struct.pack(f"<{len(values)}f", *values)


def _kind(item: Query | Term, kinds: tuple[str, ...], what: str) -> dict[str, Any]:
    given = {name: getattr(item, name) for name in kinds if getattr(item, name) is not None}
    if len(given) != 1:
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: give exactly one of {', '.join(kinds)}")
    if "vector" in given:
        given["vector"] = _vector_bytes(given["vector"])
    return given


def _batch_query(i: int, q: Query) -> search_pb.BatchQuery:
    given = _kind(q, ("text", "image", "uri", "id", "vector", "terms"), f"queries[{i}]")
    if "terms" in given:
        given["terms"] = search_pb.WeightedTerms(terms=[
            search_pb.QueryTerm(weight=t.weight,
                                **_kind(t, ("text", "image", "uri", "id", "vector"), f"queries[{i}].terms[{j}]"))
            for j, t in enumerate(given["terms"])])
    return search_pb.BatchQuery(k=q.k, filter=q.where, min_score=q.min_score, page_token=q.page_token,
                                collapse_threshold=q.collapse_threshold, **given)


def _batch_search(queries: Sequence[Query], min_position: int = 0,
                  forbid_partial: bool = False) -> _Call[list[SearchPage]]:
    request = search_pb.BatchSearchRequest(queries=[_batch_query(i, q) for i, q in enumerate(queries)],
                                           min_position=min_position, forbid_partial=forbid_partial)
    return _Call("search", "BatchSearch", request, lambda reply: [_results(r, reply) for r in reply.results])


def _submit(images: Iterable[ImageInput], batch_id: str, request_id: str | None) -> _Call[Submission]:
    # One request id per call, fresh unless given: gRPC's own retries resend this same request, so a
    # call whose first reply was lost lands once.
    request = ingest_pb.SubmitImagesRequest(
        batch_id=batch_id,
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        images=[ingest_pb.ImageSubmission(id=i.id, image=i.image, uri=i.uri, metadata=i.metadata,
                                            fields=to_values(i.fields)) for i in images],
    )
    return _Call("ingest", "SubmitImages", request, lambda r: Submission(r.batch_id, list(r.ids)))


def _progress(batch_id: str) -> _Call[Progress]:
    def parse(reply: Any) -> Progress:
        p = reply.progress
        return Progress(p.submitted, p.pending, p.indexed, p.failed)

    return _Call("ingest", "GetIngestProgress", ingest_pb.GetIngestProgressRequest(batch_id=batch_id), parse)


def _failures(batch_id: str, limit: int) -> _Call[list[Failure]]:
    def parse(reply: Any) -> list[Failure]:
        return [Failure(f.id, f.uri, f.reason, f.batch_id, f.failed_at_ms, f.attempts) for f in reply.failures]

    return _Call("ingest", "ListFailures", ingest_pb.ListFailuresRequest(batch_id=batch_id, limit=limit), parse)


def _retry(batch_id: str, ids: Sequence[str]) -> _Call[tuple[list[str], list[str]]]:
    request = ingest_pb.RetryFailuresRequest(batch_id=batch_id, ids=list(ids))
    return _Call("ingest", "RetryFailures", request, lambda r: (list(r.retried), list(r.expired)))


def _delete(ids: Sequence[str]) -> _Call[Deletion]:
    request = index_pb.DeleteImagesRequest(ids=list(ids))
    return _Call("index", "DeleteImages", request, lambda r: Deletion(list(r.deleted), list(r.not_found), r.position))


def _queue_status() -> _Call[QueueStatus]:
    def parse(r: Any) -> QueueStatus:
        workers = [WorkerStatus(w.name, w.last_seen_ms, w.alive, w.processed, w.device, w.model) for w in r.workers]
        return QueueStatus(r.jobs, r.in_flight, r.lag, r.queued_bytes, workers)

    return _Call("ingest", "GetQueueStatus", ingest_pb.GetQueueStatusRequest(), parse)


def _stats() -> _Call[IndexStats]:
    def parse(s: Any) -> IndexStats:
        training = index_pb.IndexTraining.Name(s.training).removeprefix("INDEX_TRAINING_").lower().replace("_", "-")
        return IndexStats(s.count, s.model.name, s.model.dim, s.index_type, s.hnsw_m, s.ef_construction,
                          s.ef_search, s.stale_entries, s.store_kind, s.applied_position, s.store_position, s.lag_ms,
                          s.index_kind, s.index_spec, "" if training == "unspecified" else training, s.memory_bytes,
                          s.bytes_per_vector, s.disk_bytes, s.shard_index, s.shard_count or 1, s.shards_answered)

    return _Call("index", "GetIndexStats", index_pb.GetIndexStatsRequest(), parse)


class _Base:
    def __init__(self, server: str | None, timeout: float, connection: Connection | None, **settings: Any) -> None:
        self.connection = connection or Connection.from_env(server, **settings)
        self.server = self.connection.server
        self.timeout = timeout


class Client(_Base):
    """A synchronous connection to a clipsearch server.

    server: "host:port" (default $CLIPSEARCH_SERVER or localhost:50051).
    timeout: default deadline of each call, in seconds.
    token, tls_ca, tls_cert, tls_key, tls: see `Connection` (defaults from CLIPSEARCH_* variables).
    """

    def __init__(self, server: str | None = None, timeout: float = 30.0, *,
                 connection: Connection | None = None, **settings: Any) -> None:
        super().__init__(server, timeout, connection, **settings)
        self._channel = self.connection.channel()
        self._stubs = _stubs(self._channel)

    def _invoke(self, call: _Call[T], timeout: float | None) -> T:
        method = getattr(self._stubs[call.service], call.method)
        try:
            reply = method(call.request, timeout=self.timeout if timeout is None else timeout,
                           metadata=self.connection.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return call.parse(reply)

    def text_search(self, text: str, k: int = 10, *, where: types_pb2.Filter | None = None,
                    min_score: float | None = None, page_token: str = "", collapse_threshold: float | None = None,
                    include_thumbnails: bool = False, min_position: int = 0, forbid_partial: bool = False,
                    timeout: float | None = None) -> SearchPage:
        """The k images that best match `text`, best first (a list with `.next_page_token`; pass it back
        as `page_token` for the next page). `collapse_threshold` (cosine) folds near duplicates into
        the best of each group (see SearchResult.collapsed_ids). `include_thumbnails` fills each
        result's thumbnail (k at most 100 then). `min_position`: a write's `position` (read your writes:
        the server first applies the shared store that far, else UnavailableError). `forbid_partial`:
        through a router, UnavailableError instead of partial results when a shard does not answer."""
        return self._invoke(_text_search(text, k, where, min_score, page_token, collapse_threshold,
                                         include_thumbnails, min_position, forbid_partial), timeout)

    def image_search(self, image: bytes | None = None, *, uri: str | None = None, id: str | None = None,  # noqa: A002
                     k: int = 10, where: types_pb2.Filter | None = None, min_score: float | None = None,
                     page_token: str = "", collapse_threshold: float | None = None, include_thumbnails: bool = False,
                     min_position: int = 0, forbid_partial: bool = False, timeout: float | None = None) -> SearchPage:
        """The k images most similar to a query image given as bytes, a uri, or an indexed image's id
        (other arguments as in `text_search`)."""
        return self._invoke(_image_search(image, uri, id, k, where, min_score, page_token, collapse_threshold,
                                          include_thumbnails, min_position, forbid_partial), timeout)

    def batch_search(self, queries: Sequence[Query], *, min_position: int = 0, forbid_partial: bool = False,
                     timeout: float | None = None) -> list[SearchPage]:
        """Runs 1 to 64 queries (text, image, uri, id, vector or weighted terms) in one call; one page per query."""
        return self._invoke(_batch_search(queries, min_position, forbid_partial), timeout)

    def thumbnails(self, ids: Sequence[str], *, allow_missing: bool = False,
                   timeout: float | None = None) -> dict[str, Thumbnail]:
        """id -> thumbnail of indexed images (1 to 100 ids). NotFoundError if one has none, unless
        `allow_missing` (then those are absent from the result)."""
        return self._invoke(_thumbnails(ids, allow_missing), timeout)

    def get_records(self, ids: Sequence[str], *, include_vectors: bool = False, include_thumbnails: bool = False,
                    allow_missing: bool = False, min_position: int = 0, timeout: float | None = None) -> list[Record]:
        """The records of indexed images (1 to 1000 ids; 100 with `include_thumbnails`), in the order of
        `ids` (each id once). NotFoundError naming the unknown ids, unless `allow_missing` (then they are
        left out). `include_vectors`: each record's stored unit vector (`Record.vector`, float32 bytes).
        `min_position`: a write's `position` (read your writes, as in `text_search`)."""
        return self._invoke(_get_records(ids, include_vectors, include_thumbnails, allow_missing, min_position),
                            timeout)

    def count(self, where: types_pb2.Filter | None = None, *, min_position: int = 0,
              timeout: float | None = None) -> int:
        """The exact number of indexed images, or of those matching the filter `where` (see
        clipsearch.where). Through a router: the sum over every shard (UnavailableError when a shard
        does not answer: never a short count)."""
        return self._invoke(_count(where, min_position), timeout)

    def embed(self, inputs: Sequence[EmbedInput | str | bytes], *, timeout: float | None = None) -> Embeddings:
        """The unit vectors of 1 to 64 texts and images, in order, computed with the collection's model
        exactly as searches compute their query vectors. Each input: a str (a text, 1 to 1000 characters),
        bytes (an encoded image) or an EmbedInput (text, image or uri: a location the server reads).
        InvalidArgumentError (or the uri's error) naming the input, e.g. "inputs[2]: cannot decode image"."""
        return self._invoke(_embed(inputs), timeout)

    # --- records: scroll, update and delete by filter ---

    def scroll_page(self, where: types_pb2.Filter | None = None, *, cursor: str = "", page_size: int | None = None,
                    include_vectors: bool = False, include_thumbnails: bool = False, min_position: int = 0,
                    timeout: float | None = None) -> RecordPage:
        """One page of every record (or of those matching `where`) in ascending id order: a list of Record
        with `.next_cursor`; pass it back as `cursor`, with the same `where`, for the next page ("" after
        the last). `page_size`: 1 to 1000, 1 to 100 with `include_thumbnails` (default: the most). A record
        that exists through the whole scroll comes back exactly once, even with writes going on."""
        return self._invoke(_scroll(where, cursor, page_size, include_vectors, include_thumbnails, min_position),
                            timeout)

    def scroll(self, where: types_pb2.Filter | None = None, *, page_size: int | None = None,
               include_vectors: bool = False, include_thumbnails: bool = False, min_position: int = 0,
               timeout: float | None = None) -> Iterator[Record]:
        """Every record (or every record matching `where`) in ascending id order, page after page to the
        end (`scroll_page`'s arguments; `timeout` is per page)."""
        cursor = ""
        while True:
            page = self.scroll_page(where, cursor=cursor, page_size=page_size, include_vectors=include_vectors,
                                    include_thumbnails=include_thumbnails, min_position=min_position,
                                    timeout=timeout)
            yield from page
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def update(self, ids: Sequence[str] | None = None, *, where: types_pb2.Filter | None = None,
               set_fields: Mapping[str, Any] | None = None, set_metadata: Mapping[str, str] | None = None,
               unset: Iterable[str] = (), replace: bool = False, timeout: float | None = None) -> UpdateResult:
        """Changes the fields and metadata of indexed images, by `ids` (1 to 1000) or by filter (`where`):
        exactly one of them (ValueError otherwise). `set_fields`: typed values (str, int, float, bool,
        datetime, list of str, as `ImageInput.fields`); `set_metadata`: strings; `unset`: keys to remove;
        `replace`: remove every other key first (the images end with exactly what is set). The vector,
        uri and thumbnail stay. Returns how many were updated and, by ids, those not found."""
        return self._invoke(_update(ids, where, set_fields, set_metadata, unset, replace), timeout)

    def delete_where(self, where: types_pb2.Filter | None = None, *, all: bool = False,  # noqa: A002
                     timeout: float | None = None) -> RecordsDeleted:
        """Deletes every image matching `where` (every image with `all=True` and no filter); returns the
        number deleted. FailedPreconditionError when the filter matches every image and `all` is not
        set. `delete(ids)` deletes by id."""
        return self._invoke(_delete_where(where, all), timeout)

    def submit(self, images: Sequence[ImageInput], batch_id: str = "", *, timeout: float | None = None,
               request_id: str | None = None) -> Submission:
        """Queues images for indexing (at most 1000 per call). Pass `batch_id` to add to an earlier batch.
        `request_id` (default: a fresh UUID per call) makes retries land once: a call with a request id the
        server saw in the last 24 hours queues nothing and returns the first call's result; pass your own
        to retry a whole call safely yourself, "" to turn deduplication off."""
        return self._invoke(_submit(images, batch_id, request_id), timeout)

    def progress(self, batch_id: str = "", *, timeout: float | None = None) -> Progress:
        """Ingestion counts of one batch, or of the whole service."""
        return self._invoke(_progress(batch_id), timeout)

    def failures(self, batch_id: str = "", limit: int = 100, *, timeout: float | None = None) -> list[Failure]:
        """The newest ingestion failures with their reasons."""
        return self._invoke(_failures(batch_id, limit), timeout)

    def retry_failures(self, batch_id: str = "", ids: Sequence[str] = (), *,
                       timeout: float | None = None) -> tuple[list[str], list[str]]:
        """Queues failed images again (all, one batch's, or `ids`). Returns (retried ids, expired ids)."""
        return self._invoke(_retry(batch_id, ids), timeout)

    def delete(self, ids: Sequence[str], *, timeout: float | None = None) -> Deletion:
        """Deletes images by id. Returns (deleted ids, ids that were not found), a `Deletion` whose
        `position` is the read-your-writes token (0 with the SQLite store). Idempotent."""
        return self._invoke(_delete(ids), timeout)

    def stats(self, *, timeout: float | None = None) -> IndexStats:
        """Index size, model and parameters."""
        return self._invoke(_stats(), timeout)

    def queue_status(self, *, timeout: float | None = None) -> QueueStatus:
        """Queue depth and the encoder workers that reported recently."""
        return self._invoke(_queue_status(), timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard gRPC health status of the server (or one service): "SERVING", "NOT_SERVING", ..."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service),
                               timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Blocks until the channel connects, or raises UnavailableError."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"{self.server} not reachable in {timeout}s") from exc

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of `Client`: the same methods, awaitable. Create it inside a running event loop."""

    def __init__(self, server: str | None = None, timeout: float = 30.0, *,
                 connection: Connection | None = None, **settings: Any) -> None:
        super().__init__(server, timeout, connection, **settings)
        self._channel = self.connection.aio_channel()
        self._stubs = _stubs(self._channel)

    async def _invoke(self, call: _Call[T], timeout: float | None) -> T:
        method = getattr(self._stubs[call.service], call.method)
        try:
            reply = await method(call.request, timeout=self.timeout if timeout is None else timeout,
                                 metadata=self.connection.metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return call.parse(reply)

    async def text_search(self, text: str, k: int = 10, *, where: types_pb2.Filter | None = None,
                          min_score: float | None = None, page_token: str = "",
                          collapse_threshold: float | None = None, include_thumbnails: bool = False,
                          min_position: int = 0, forbid_partial: bool = False,
                          timeout: float | None = None) -> SearchPage:
        return await self._invoke(_text_search(text, k, where, min_score, page_token, collapse_threshold,
                                               include_thumbnails, min_position, forbid_partial), timeout)

    async def image_search(self, image: bytes | None = None, *, uri: str | None = None, id: str | None = None,  # noqa: A002
                           k: int = 10, where: types_pb2.Filter | None = None, min_score: float | None = None,
                           page_token: str = "", collapse_threshold: float | None = None,
                           include_thumbnails: bool = False, min_position: int = 0, forbid_partial: bool = False,
                           timeout: float | None = None) -> SearchPage:
        return await self._invoke(
            _image_search(image, uri, id, k, where, min_score, page_token, collapse_threshold, include_thumbnails,
                          min_position, forbid_partial), timeout)

    async def batch_search(self, queries: Sequence[Query], *, min_position: int = 0, forbid_partial: bool = False,
                           timeout: float | None = None) -> list[SearchPage]:
        return await self._invoke(_batch_search(queries, min_position, forbid_partial), timeout)

    async def thumbnails(self, ids: Sequence[str], *, allow_missing: bool = False,
                         timeout: float | None = None) -> dict[str, Thumbnail]:
        return await self._invoke(_thumbnails(ids, allow_missing), timeout)

    async def get_records(self, ids: Sequence[str], *, include_vectors: bool = False,
                          include_thumbnails: bool = False, allow_missing: bool = False, min_position: int = 0,
                          timeout: float | None = None) -> list[Record]:
        return await self._invoke(_get_records(ids, include_vectors, include_thumbnails, allow_missing,
                                               min_position), timeout)

    async def count(self, where: types_pb2.Filter | None = None, *, min_position: int = 0,
                    timeout: float | None = None) -> int:
        return await self._invoke(_count(where, min_position), timeout)

    async def embed(self, inputs: Sequence[EmbedInput | str | bytes], *,
                    timeout: float | None = None) -> Embeddings:
        return await self._invoke(_embed(inputs), timeout)

    # --- records: scroll, update and delete by filter ---

    async def scroll_page(self, where: types_pb2.Filter | None = None, *, cursor: str = "",
                          page_size: int | None = None, include_vectors: bool = False,
                          include_thumbnails: bool = False, min_position: int = 0,
                          timeout: float | None = None) -> RecordPage:
        return await self._invoke(_scroll(where, cursor, page_size, include_vectors, include_thumbnails,
                                          min_position), timeout)

    async def scroll(self, where: types_pb2.Filter | None = None, *, page_size: int | None = None,
                     include_vectors: bool = False, include_thumbnails: bool = False, min_position: int = 0,
                     timeout: float | None = None) -> AsyncIterator[Record]:
        cursor = ""
        while True:
            page = await self.scroll_page(where, cursor=cursor, page_size=page_size, include_vectors=include_vectors,
                                          include_thumbnails=include_thumbnails, min_position=min_position,
                                          timeout=timeout)
            for record in page:
                yield record
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def update(self, ids: Sequence[str] | None = None, *, where: types_pb2.Filter | None = None,
                     set_fields: Mapping[str, Any] | None = None, set_metadata: Mapping[str, str] | None = None,
                     unset: Iterable[str] = (), replace: bool = False, timeout: float | None = None) -> UpdateResult:
        return await self._invoke(_update(ids, where, set_fields, set_metadata, unset, replace), timeout)

    async def delete_where(self, where: types_pb2.Filter | None = None, *, all: bool = False,  # noqa: A002
                           timeout: float | None = None) -> RecordsDeleted:
        return await self._invoke(_delete_where(where, all), timeout)

    async def submit(self, images: Sequence[ImageInput], batch_id: str = "", *,
                     timeout: float | None = None, request_id: str | None = None) -> Submission:
        return await self._invoke(_submit(images, batch_id, request_id), timeout)

    async def progress(self, batch_id: str = "", *, timeout: float | None = None) -> Progress:
        return await self._invoke(_progress(batch_id), timeout)

    async def failures(self, batch_id: str = "", limit: int = 100, *,
                       timeout: float | None = None) -> list[Failure]:
        return await self._invoke(_failures(batch_id, limit), timeout)

    async def retry_failures(self, batch_id: str = "", ids: Sequence[str] = (), *,
                             timeout: float | None = None) -> tuple[list[str], list[str]]:
        return await self._invoke(_retry(batch_id, ids), timeout)

    async def delete(self, ids: Sequence[str], *, timeout: float | None = None) -> Deletion:
        return await self._invoke(_delete(ids), timeout)

    async def stats(self, *, timeout: float | None = None) -> IndexStats:
        return await self._invoke(_stats(), timeout)

    async def queue_status(self, *, timeout: float | None = None) -> QueueStatus:
        return await self._invoke(_queue_status(), timeout)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                     timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
