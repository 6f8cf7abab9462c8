"""The router (`clipsearch router`, `python -m clipsearch_router`): one gRPC address in front of
several search servers holding the shards of one collection.

- Searches go to one healthy replica of every shard (cluster.py: round robin, failover on UNAVAILABLE),
  each asked for the same k with the same filter and threshold; the replies are merged into the global
  top k in (score desc, id asc) order. Each shard has `shard_timeout_s` (capped by the caller's
  deadline); a shard missing then is left out and the response says so (shards_total,
  shards_answered, partial), unless the request sets forbid_partial: then the call fails with
  UNAVAILABLE as soon as a shard is known missing. An ImageSearch by id searches only the shard that
  holds the id (the others do not have its vector): partial with several shards. A search with a
  min_position that a replica has not reached within its --read-wait (UNAVAILABLE) moves on to the
  next replica without marking the first unhealthy (it is not down, only behind for that request).
- UpsertVectors and DeleteImages are split by `shard_of(id, N)`; each part goes to the owning shard:
  to every replica (`replica_writes="all"`, each replica has its own SQLite store) or to one
  (`"one"`, replicas sharing a PostgreSQL store); `"auto"` (the default) asks each shard once, at its
  first write, for its GetIndexStats.store_kind and picks "one" for "postgresql", else "all". A part
  that fails fails the call with the server's code (writes are idempotent: the worker retries the whole
  call). The reply's `position` (read-your-writes token) is the largest of the parts' (positions are
  global in a shared store, so it covers every part).
- Embed goes to any one server (every shard holds the same model), with failover, forwarded as bytes; an
  UNAVAILABLE for a uri input may be the URL's, so it moves on without marking the server unhealthy.
- GetThumbnails is split by owning shard the same way (one replica each), reassembled in request order;
  ids without a thumbnail are NOT_FOUND unless allow_missing, as on a server. Searches forward
  include_thumbnails and min_position unchanged (the request travels as bytes).
- RecordService: GetRecords is split by owning shard like GetThumbnails (one replica each, allow_missing
  on every part), reassembled in request order; unknown ids are NOT_FOUND unless allow_missing, as on a
  server. CountRecords is the sum over every shard (one replica each, failover among them); a count must
  be exact, so a shard that does not answer fails the call with UNAVAILABLE naming it (no partial count).
  Both forward min_position (a replica behind it moves on to the next, as searches do). ScrollRecords
  asks every shard for its page after the cursor (one replica each; no partial pages) and merges them in
  id order (`merge_scroll`): the cursor is the last id, so it is valid on every shard and every replica.
  UpdateRecords by ids is split by owning shard, by filter sent to every shard, each part written like
  UpsertVectors (`Writes`); DeleteRecords checks its guard (a filter matching everything needs `all`)
  over the whole collection with two counts, then sends every shard the delete.
- GetIndexStats sums counts over the shards that answer; of the store fields it reports the store kind,
  the smallest applied position, the largest store position and the largest lag of the replicas asked.
  IngestService calls go to any one server (they share the Redis queue), forwarded as bytes.
- The caller's `authorization` header and deadline travel with every call; a server's error comes
  back with its code and message. The router itself checks no token: the servers do.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from clipsearch.v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    ingest_service_pb2 as ingest_pb,
    record_service_pb2 as record_pb,
    record_service_pb2_grpc as record_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)
from clipsearch_core import pages
from clipsearch_core.errors import FailedPrecondition, InvalidArgument, Unavailable
from clipsearch_core.shards import shard_of
from clipsearch_server.api import program, validation as check
from clipsearch_server.api.boundary import MalformedRequests, boundary
from clipsearch_server.api.metrics import PARTIAL, serve_metrics
from clipsearch_server.api.security import SERVICE_NAMES

from .cluster import Cluster, Metadata, Shard, ShardDown, Upstream, parse_shards

__all__ = ["RouterConfig", "RunningRouter", "create_router", "main", "serve"]

log = logging.getLogger(__name__)

_SEARCH = "/clipsearch.v1.SearchService/"
_INDEX = "/clipsearch.v1.IndexService/"
_RECORD = "/clipsearch.v1.RecordService/"
_WRITE_TIMEOUT_S = 60.0  # writes without a caller deadline


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router needs (each field is the option of the same name).

    shards: per shard, in shard order, the addresses of its replicas.
    shard_timeout_s: how long each shard has to answer a search or a stats call.
    health_interval_s: seconds between health checks of each replica.
    replica_writes: "all" (every replica of the owning shard), "one" (replicas share a store) or "auto"
        (by each shard's store kind, asked at its first write).
    upstream: TLS to the servers and the message size limit.
    metrics_port: Prometheus /metrics port (0: off).
    """

    host: str
    port: int
    shards: list[list[str]]
    shard_timeout_s: float = 2.0
    health_interval_s: float = 1.0
    replica_writes: str = "auto"
    upstream: Upstream = Upstream()
    grace_s: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int = 0

    @classmethod
    def from_args(cls, args: Any) -> "RouterConfig":
        """From a command line parsed by `settings.parse("router", ...)`."""
        if args.shard_timeout <= 0 or args.health_interval <= 0:
            raise InvalidArgument("--shard-timeout and --health-interval must be positive (seconds)")
        path = lambda value: Path(value) if value else None  # noqa: E731
        return cls(
            host=args.host, port=args.port, shards=parse_shards(args.shard), shard_timeout_s=args.shard_timeout,
            health_interval_s=args.health_interval, replica_writes=args.replica_writes,
            upstream=Upstream(path(args.tls_ca), path(args.tls_client_cert), path(args.tls_client_key),
                              args.max_message_bytes),
            grace_s=args.grace, tls_cert=path(args.tls_cert), tls_key=path(args.tls_key),
            tls_client_ca=path(args.tls_client_ca), metrics_port=args.metrics_port,
        )


def _upstream(exc: Exception, context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
    """The router's own errors: a server's error goes back with its code, message and retry-after-ms; a
    missing shard is UNAVAILABLE."""
    if isinstance(exc, grpc.aio.AioRpcError):
        trailing = [(k, v) for k, v in (exc.trailing_metadata() or ()) if k == "retry-after-ms"]
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        return exc.code(), exc.details() or ""
    if isinstance(exc, ShardDown):
        return grpc.StatusCode.UNAVAILABLE, f"{exc}; retry"
    return None


# The router's API boundary: upstream errors as above, domain errors through errors.status_for, anything
# else INTERNAL with a logged request id; every call counted and timed (clipsearch_server/api/boundary.py).
_edge = boundary(_upstream)


def _forwarded(context: grpc.aio.ServicerContext) -> Metadata:
    """The caller's metadata that servers need: its bearer token."""
    return tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k == "authorization")


def _budget(context: grpc.aio.ServicerContext, cap: float | None) -> float | None:
    """Seconds a call to a server may take: the caller's time left, at most `cap`."""
    left = context.time_remaining()
    if left is None:
        return cap
    return left if cap is None else min(left, cap)


def by_shard(ids: Sequence[str], count: int) -> dict[int, list[int]]:
    """Positions of the ids in a request, grouped by owning shard (of `count`)."""
    groups: dict[int, list[int]] = {}
    for i, image_id in enumerate(ids):
        groups.setdefault(shard_of(image_id, count), []).append(i)
    return groups


def _refuse_collapse(request: Any, shards: int, prefix: str = "") -> None:
    """Each shard collapses only its own candidates and the router has no vectors to compare across
    shards: a collapsed search over several shards would return near duplicates it promised to fold."""
    if shards > 1 and request.HasField("collapse_threshold"):
        raise FailedPrecondition(f"{prefix}collapse_threshold is not supported through a router over {shards} "
                                 "shards (near duplicates on different shards cannot be folded)")


def merge(replies: Sequence[Sequence[types_pb2.SearchResult]], k: int) -> list[types_pb2.SearchResult]:
    """The global top k of the shards' top k lists, in (score desc, id asc) order. Exact: each image is
    in one shard, and each shard returned its own best k."""
    every = [r for results in replies for r in results]
    every.sort(key=lambda r: (-r.score, r.id))
    return every[:k]


def merge_page(request: Any, kind: str, shard_pages: Sequence[Any]) -> tuple[list[types_pb2.SearchResult], str]:
    """The global page of one query from the shards' pages (each shard got the same request and page
    token: the best k after the same cursor) and the global next_page_token. More results exist when a
    shard said so or some shard result did not make the page; the token is the cursor after the page's
    last result, with the fingerprint every shard computes for this query (pages.request_fingerprint)."""
    fingerprint = pages.request_fingerprint(request, kind)
    before = pages.decode(request.page_token, fingerprint, request.k).returned if request.page_token else 0
    page = merge([p.results for p in shard_pages], request.k)
    if len(shard_pages) == 1:  # the shard's page as it is, and its cursor (after images folded by collapse)
        return page, shard_pages[0].next_page_token
    more = any(p.next_page_token for p in shard_pages) or sum(len(p.results) for p in shard_pages) > len(page)
    if not page:
        return page, ""
    return page, pages.next_token(page[-1].score, page[-1].id, before + len(page), fingerprint, more)


def _fetches_uri(request: Any) -> bool:
    """Whether the servers fetch an image URL to answer this search: an UNAVAILABLE for it may be the
    URL's (DNS, HTTP 5xx, unreachable host), not the replica's, so it must not take replicas out."""
    if isinstance(request, search_pb.BatchSearchRequest):
        return any(q.WhichOneof("query") == "uri" or any(t.WhichOneof("term") == "uri" for t in q.terms.terms)
                   for q in request.queries)
    if isinstance(request, search_pb.EmbedRequest):
        return any(item.WhichOneof("input") == "uri" for item in request.inputs)
    return isinstance(request, search_pb.ImageSearchRequest) and request.WhichOneof("query") == "uri"


class RouterSearch(search_grpc.SearchServiceServicer):
    """SearchService: fan out to every shard, merge, say how many shards answered; thumbnails by owning shard;
    Embed by any one server."""

    def __init__(self, cluster: Cluster, shard_timeout_s: float) -> None:
        self._cluster = cluster
        self._timeout = shard_timeout_s

    async def _fan_out(self, method: str, request: Any, reply_type: Any, shards: Sequence[Shard], forbid: bool,
                       context: grpc.aio.ServicerContext) -> list[Any]:
        """Each answering shard's parsed reply (the others are counted and logged). With `forbid`, the
        first missing shard fails the call at once (the other calls are cancelled)."""
        payload, metadata = request.SerializeToString(), _forwarded(context)
        timeout = _budget(context, self._timeout)
        mark_down = request.min_position == 0 and not _fetches_uri(request)  # see cluster.first_answer
        tasks = [asyncio.create_task(s.call(_SEARCH + method, payload, timeout, metadata, mark_down)) for s in shards]
        replies: list[Any] = []
        missing: list[ShardDown] = []
        try:
            for done in asyncio.as_completed(tasks):
                try:
                    replies.append(reply_type.FromString(await done))
                except ShardDown as exc:
                    if forbid:
                        raise Unavailable(f"{exc}; the request forbids partial results (forbid_partial): retry, "
                                          "or allow partial results") from exc
                    missing.append(exc)
        finally:
            for task in tasks:
                task.cancel()
        if not replies:
            raise Unavailable("no shard answered: " + "; ".join(str(m) for m in missing) + "; retry")
        for m in missing:
            PARTIAL.labels(str(m.index)).inc()
        if missing:
            log.warning("%s: partial result, %d of %d shards answered (%s)", method, len(replies),
                        len(shards), "; ".join(str(m) for m in missing))
        return replies

    async def _search(self, method: str, request: Any, reply_type: Any, context: grpc.aio.ServicerContext,
                      shards: Sequence[Shard] | None = None) -> Any:
        shards = list(shards or self._cluster.shards)
        kind = "text" if method == "TextSearch" else request.WhichOneof("query")
        if kind is None or request.k < 1:
            raise InvalidArgument("set a query and k >= 1")  # the servers say it in detail; the merge needs both
        _refuse_collapse(request, len(shards))
        if request.page_token:
            pages.decode(request.page_token, pages.request_fingerprint(request, kind), request.k)  # fail fast
        replies = await self._fan_out(method, request, reply_type, shards, request.forbid_partial, context)
        total = self._cluster.count
        results, token = merge_page(request, kind, replies)
        return reply_type(results=results, next_page_token=token, shards_total=total,
                          shards_answered=len(replies), partial=len(replies) < total)

    @_edge
    async def BatchSearch(self, request: search_pb.BatchSearchRequest,
                          context: grpc.aio.ServicerContext) -> search_pb.BatchSearchResponse:
        check.count(len(request.queries), check.MAX_BATCH, "queries")
        kinds = [q.WhichOneof("query") for q in request.queries]
        for i, (q, kind) in enumerate(zip(request.queries, kinds)):
            if kind is None or q.k < 1:
                raise InvalidArgument(f"queries[{i}]: set a query and k >= 1")
            by_id = kind == "id" or (kind == "terms" and any(t.WhichOneof("term") == "id" for t in q.terms.terms))
            if by_id and self._cluster.count > 1:
                raise FailedPrecondition(
                    f"queries[{i}] searches by image id, but through a router with {self._cluster.count} shards only "
                    "the shard holding that id has its vector: use ImageSearch by id, or send the vector itself")
            _refuse_collapse(q, self._cluster.count, f"queries[{i}]: ")
            if q.page_token:
                pages.decode(q.page_token, pages.request_fingerprint(q, kind), q.k)
        replies = await self._fan_out("BatchSearch", request, search_pb.BatchSearchResponse,
                                         list(self._cluster.shards), request.forbid_partial, context)
        total = self._cluster.count
        results = []
        for i, (q, kind) in enumerate(zip(request.queries, kinds)):
            page, token = merge_page(q, kind, [r.results[i] for r in replies])
            results.append(search_pb.BatchResult(results=page, next_page_token=token))
        return search_pb.BatchSearchResponse(results=results, shards_total=total, shards_answered=len(replies),
                                             partial=len(replies) < total)

    @_edge
    async def TextSearch(self, request: search_pb.TextSearchRequest,
                         context: grpc.aio.ServicerContext) -> search_pb.TextSearchResponse:
        return await self._search("TextSearch", request, search_pb.TextSearchResponse, context)

    @_edge
    async def ImageSearch(self, request: search_pb.ImageSearchRequest,
                          context: grpc.aio.ServicerContext) -> search_pb.ImageSearchResponse:
        if request.WhichOneof("query") != "id" or self._cluster.count == 1:
            return await self._search("ImageSearch", request, search_pb.ImageSearchResponse, context)
        owner = self._cluster.shards[shard_of(check.image_id(request.id), self._cluster.count)]
        if request.forbid_partial:
            raise FailedPrecondition(
                f"a search by id through the router searches only the shard holding that id (shard {owner.index} "
                f"of {self._cluster.count}): the others do not have its vector. Allow partial results, or search "
                "with the image itself (image or uri)")
        return await self._search("ImageSearch", request, search_pb.ImageSearchResponse, context, [owner])

    @_edge
    async def GetThumbnails(self, request: search_pb.GetThumbnailsRequest,
                            context: grpc.aio.ServicerContext) -> search_pb.GetThumbnailsResponse:
        ids = check.image_ids(request.ids, check.MAX_THUMBNAIL_IDS)
        metadata, timeout = _forwarded(context), _budget(context, self._timeout)
        groups = by_shard(ids, self._cluster.count)
        parts = [search_pb.GetThumbnailsRequest(ids=sorted({ids[i] for i in positions}), allow_missing=True)
                 for positions in groups.values()]
        replies = await asyncio.gather(*(
            self._cluster.shards[index].call(_SEARCH + "GetThumbnails", part.SerializeToString(), timeout, metadata)
            for index, part in zip(groups, parts)))
        found = {t.id: t.thumbnail for r in replies for t in search_pb.GetThumbnailsResponse.FromString(r).thumbnails}
        missing = check.thumbnails_missing(ids, found, request.allow_missing)
        return search_pb.GetThumbnailsResponse(
            thumbnails=[search_pb.ImageThumbnail(id=image_id, thumbnail=found[image_id]) for image_id in ids
                        if image_id in found], not_found=missing)

    @_edge
    async def Embed(self, request: search_pb.EmbedRequest,
                    context: grpc.aio.ServicerContext) -> search_pb.EmbedResponse:
        reply = await self._cluster.call_any(_SEARCH + "Embed", request.SerializeToString(), _budget(context, None),
                                             _forwarded(context), mark_down=not _fetches_uri(request))
        return search_pb.EmbedResponse.FromString(reply)


class Writes:
    """Sends writes to shards: to every replica of a shard (each has its own store) or to one (replicas
    sharing a PostgreSQL store), as `replica_writes` says ("auto": by each shard's store kind, asked once)."""

    def __init__(self, cluster: Cluster, shard_timeout_s: float, replica_writes: str) -> None:
        self._cluster = cluster
        self._timeout = shard_timeout_s
        self._replica_writes = replica_writes
        self._shared_store: dict[int, bool] = {}  # "auto": shard index -> its replicas share a store

    async def _to_every_replica(self, shard: Shard, timeout: float, metadata: Metadata) -> bool:
        """Whether a write goes to every replica of `shard` (own stores) or to one (a shared store)."""
        if self._replica_writes != "auto":
            return self._replica_writes == "all"
        if shard.index not in self._shared_store:
            reply = await shard.call(_INDEX + "GetIndexStats", b"", min(timeout, self._timeout), metadata)
            kind = index_pb.GetIndexStatsResponse.FromString(reply).store_kind
            self._shared_store[shard.index] = kind == "postgresql"
            log.info("%s: store %s, writes go to %s replica", shard.name, kind or "sqlite",
                     "one" if kind == "postgresql" else "every")
        return not self._shared_store[shard.index]

    async def send(self, path: str, parts: dict[int, bytes], context: grpc.aio.ServicerContext) -> dict[int, bytes]:
        """Sends each shard its part (`path`: the full method path); every part must succeed (the first
        error is raised)."""
        timeout, metadata = _budget(context, None) or _WRITE_TIMEOUT_S, _forwarded(context)

        async def one(index: int, payload: bytes) -> bytes:
            shard = self._cluster.shards[index]
            send = shard.call_all if await self._to_every_replica(shard, timeout, metadata) else shard.call
            return await send(path, payload, timeout, metadata)

        indexes = list(parts)
        replies = await asyncio.gather(*(one(i, parts[i]) for i in indexes))
        return dict(zip(indexes, replies))


class RouterIndex(index_grpc.IndexServiceServicer):
    """IndexService: writes split by owning shard; statistics summed over the shards."""

    def __init__(self, cluster: Cluster, shard_timeout_s: float, writes: Writes) -> None:
        self._cluster = cluster
        self._timeout = shard_timeout_s
        self._writes = writes

    async def _write(self, method: str, parts: dict[int, bytes], context: grpc.aio.ServicerContext) -> dict[int, bytes]:
        return await self._writes.send(_INDEX + method, parts, context)

    @_edge
    async def UpsertVectors(self, request: index_pb.UpsertVectorsRequest,
                            context: grpc.aio.ServicerContext) -> index_pb.UpsertVectorsResponse:
        check.count(len(request.records), check.MAX_UPSERT_RECORDS, "records")
        ids = [check.image_id(r.id, f"records[{i}].id") for i, r in enumerate(request.records)]
        parts = {
            index: index_pb.UpsertVectorsRequest(model=request.model,
                                                 records=[request.records[i] for i in positions]).SerializeToString()
            for index, positions in by_shard(ids, self._cluster.count).items()
        }
        replies = await self._write("UpsertVectors", parts, context)
        answers = [index_pb.UpsertVectorsResponse.FromString(r) for r in replies.values()]
        return index_pb.UpsertVectorsResponse(upserted=sum(a.upserted for a in answers),
                                              position=max(a.position for a in answers))

    @_edge
    async def DeleteImages(self, request: index_pb.DeleteImagesRequest,
                           context: grpc.aio.ServicerContext) -> index_pb.DeleteImagesResponse:
        ids = check.image_ids(request.ids, check.MAX_DELETE_IDS)
        parts = {index: index_pb.DeleteImagesRequest(ids=[ids[i] for i in positions]).SerializeToString()
                 for index, positions in by_shard(ids, self._cluster.count).items()}
        replies = await self._write("DeleteImages", parts, context)
        answers = [index_pb.DeleteImagesResponse.FromString(r) for r in replies.values()]
        deleted = {d for a in answers for d in a.deleted}
        return index_pb.DeleteImagesResponse(deleted=[i for i in ids if i in deleted],
                                             not_found=[i for i in ids if i not in deleted],
                                             position=max(a.position for a in answers))

    @_edge
    async def GetIndexStats(self, request: index_pb.GetIndexStatsRequest,
                            context: grpc.aio.ServicerContext) -> index_pb.GetIndexStatsResponse:
        payload, metadata = request.SerializeToString(), _forwarded(context)
        timeout = _budget(context, self._timeout)
        shards = self._cluster.shards
        replies = await asyncio.gather(
            *(s.call(_INDEX + "GetIndexStats", payload, timeout, metadata) for s in shards), return_exceptions=True)
        answered: list[index_pb.GetIndexStatsResponse] = []
        for shard, reply in zip(shards, replies):
            if isinstance(reply, ShardDown):
                continue
            if isinstance(reply, BaseException):
                raise reply
            stats = index_pb.GetIndexStatsResponse.FromString(reply)
            if stats.shard_count not in (0, len(shards)) or (stats.shard_count and stats.shard_index != shard.index):
                raise FailedPrecondition(
                    f"{shard.name} reports shard {stats.shard_index}/{stats.shard_count}, but the router has it as "
                    f"shard {shard.index}/{len(shards)}: give the router one --shard per shard, in shard order")
            answered.append(stats)
        if not answered:
            raise Unavailable("no shard answered: " + "; ".join(str(r) for r in replies) + "; retry")
        first = answered[0]
        return index_pb.GetIndexStatsResponse(
            count=sum(s.count for s in answered), model=first.model, index_type=first.index_type,
            hnsw_m=first.hnsw_m, ef_construction=first.ef_construction, ef_search=first.ef_search,
            stale_entries=sum(s.stale_entries for s in answered), shard_index=0, shard_count=len(shards),
            shards_answered=len(answered), store_kind=first.store_kind,
            applied_position=min(s.applied_position for s in answered),
            store_position=max(s.store_position for s in answered), lag_ms=max(s.lag_ms for s in answered))


class RouterRecords(record_grpc.RecordServiceServicer):
    """RecordService: records by owning shard, reassembled in request order; counts summed over every shard;
    scroll pages merged in id order; updates and deletes by id to the owning shards, by filter to every shard."""

    def __init__(self, cluster: Cluster, shard_timeout_s: float, writes: Writes) -> None:
        self._cluster = cluster
        self._timeout = shard_timeout_s
        self._writes = writes

    @_edge
    async def GetRecords(self, request: record_pb.GetRecordsRequest,
                         context: grpc.aio.ServicerContext) -> record_pb.GetRecordsResponse:
        ids = check.record_ids(request.ids, request.include_thumbnails)
        check.min_position(request.min_position)
        metadata, timeout = _forwarded(context), _budget(context, self._timeout)
        groups = by_shard(ids, self._cluster.count)
        parts = []
        for positions in groups.values():
            part = _with_ids(request, [ids[i] for i in positions])
            part.allow_missing = True
            parts.append(part)
        replies = await asyncio.gather(*(
            self._cluster.shards[index].call(_RECORD + "GetRecords", part.SerializeToString(), timeout, metadata,
                                             request.min_position == 0)
            for index, part in zip(groups, parts)))
        found = {r.id: r for reply in replies for r in record_pb.GetRecordsResponse.FromString(reply).records}
        missing = check.records_missing(ids, found, request.allow_missing)
        return record_pb.GetRecordsResponse(records=[found[i] for i in ids if i in found], missing_ids=missing)

    async def _every_shard(self, method: str, request: Any, context: grpc.aio.ServicerContext, what: str,
                           min_position: int = 0) -> list[bytes]:
        """Each shard's reply (one replica each, with failover); UNAVAILABLE naming the shard when one has
        no answer, since `what` is not right without every shard."""
        payload, metadata = request.SerializeToString(), _forwarded(context)
        timeout = _budget(context, self._timeout)
        try:
            return list(await asyncio.gather(*(
                s.call(_RECORD + method, payload, timeout, metadata, min_position == 0) for s in self._cluster.shards)))
        except ShardDown as exc:
            raise Unavailable(f"{exc}; {what} without every shard: retry") from exc

    @_edge
    async def CountRecords(self, request: record_pb.CountRecordsRequest,
                           context: grpc.aio.ServicerContext) -> record_pb.CountRecordsResponse:
        check.min_position(request.min_position)
        replies = await self._every_shard("CountRecords", request, context, "a count must be exact, so there is none",
                                          request.min_position)
        return record_pb.CountRecordsResponse(
            count=sum(record_pb.CountRecordsResponse.FromString(r).count for r in replies))

    @_edge
    async def ScrollRecords(self, request: record_pb.ScrollRecordsRequest,
                            context: grpc.aio.ServicerContext) -> record_pb.ScrollRecordsResponse:
        query = pages.scroll_fingerprint(request)
        pages.scroll_after(request.cursor, query)  # fail fast on a bad cursor
        size = check.page_size(request.page_size, request.include_thumbnails)
        check.min_position(request.min_position)
        replies = [record_pb.ScrollRecordsResponse.FromString(r) for r in await self._every_shard(
            "ScrollRecords", request, context, "a scroll page would skip records", request.min_position)]
        return merge_scroll(replies, size, query)

    @_edge
    async def UpdateRecords(self, request: record_pb.UpdateRecordsRequest,
                            context: grpc.aio.ServicerContext) -> record_pb.UpdateRecordsResponse:
        if bool(request.ids) == request.HasField("filter"):
            raise InvalidArgument("give exactly one of ids and filter: the images to update")
        if request.ids:
            ids = list(dict.fromkeys(check.image_ids(request.ids, check.MAX_UPDATE_IDS)))
            parts = {}
            for index, positions in by_shard(ids, self._cluster.count).items():
                parts[index] = _with_ids(request, [ids[i] for i in positions]).SerializeToString()
        else:
            payload = request.SerializeToString()
            parts = {shard.index: payload for shard in self._cluster.shards}
        replies = await self._writes.send(_RECORD + "UpdateRecords", parts, context)
        answers = [record_pb.UpdateRecordsResponse.FromString(r) for r in replies.values()]
        missing = {i for a in answers for i in a.not_found}
        return record_pb.UpdateRecordsResponse(
            updated=sum(a.updated for a in answers), position=max(a.position for a in answers),
            not_found=[i for i in dict.fromkeys(request.ids) if i in missing])

    @_edge
    async def DeleteRecords(self, request: record_pb.DeleteRecordsRequest,
                            context: grpc.aio.ServicerContext) -> record_pb.DeleteRecordsResponse:
        if not request.HasField("filter") and not request.all:
            raise InvalidArgument("give a filter, or set `all` to delete every image")
        if request.HasField("filter") and not request.all:  # the guard holds for the collection, not each shard
            counts = [record_pb.CountRecordsRequest(filter=request.filter), record_pb.CountRecordsRequest()]
            matching, live = [sum(record_pb.CountRecordsResponse.FromString(r).count for r in await self._every_shard(
                "CountRecords", c, context, "the delete's guard (does the filter match everything?) cannot be checked"))
                for c in counts]
            if live and matching >= live:
                raise FailedPrecondition(
                    f"the filter matches every image ({live}); set `all` (clipsearch delete --all) to delete them all")
        shard_request = record_pb.DeleteRecordsRequest()
        shard_request.CopyFrom(request)
        shard_request.all = True  # checked above for the whole collection
        payload = shard_request.SerializeToString()
        replies = await self._writes.send(_RECORD + "DeleteRecords", {s.index: payload for s in self._cluster.shards},
                                          context)
        answers = [record_pb.DeleteRecordsResponse.FromString(r) for r in replies.values()]
        return record_pb.DeleteRecordsResponse(deleted=sum(a.deleted for a in answers),
                                               position=max(a.position for a in answers))


def _with_ids(request: Any, ids: Sequence[str]) -> Any:
    """A copy of `request` for one shard, with only these ids: every other option travels, fields this
    router does not know included."""
    part = type(request)()
    part.CopyFrom(request)
    del part.ids[:]
    part.ids.extend(ids)
    return part


def merge_scroll(replies: Sequence[record_pb.ScrollRecordsResponse], size: int,
                 query: str) -> record_pb.ScrollRecordsResponse:
    """The global scroll page from the shards' pages after the same cursor (each the first `size` of its
    shard in id order): the first `size` of all of them in id order. More follow when a shard said so or
    some shard record did not make the page; the cursor is then the page's last id."""
    every = sorted((r for reply in replies for r in reply.records), key=lambda r: r.id)
    page = every[:size]
    more = len(every) > size or any(reply.next_cursor for reply in replies)
    return record_pb.ScrollRecordsResponse(
        records=page, next_cursor=pages.scroll_cursor(page[-1].id, query) if more and page else "")


def _ingest_handler(cluster: Cluster) -> grpc.GenericRpcHandler:
    """IngestService: every method forwarded as bytes to any one server (they share the Redis queue)."""
    service = ingest_pb.DESCRIPTOR.services_by_name["IngestService"]

    def forward(path: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def handler(self: Any, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await cluster.call_any(path, request, _budget(context, None), _forwarded(context))

        handler.__name__ = path.rsplit("/", 1)[-1]
        bound = _edge(handler)

        # `call` is a coroutine function, for grpc.aio
        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await bound(None, request, context)

        return call

    return grpc.method_handlers_generic_handler(service.full_name, {
        m.name: grpc.unary_unary_rpc_method_handler(forward(f"/{service.full_name}/{m.name}"))
        for m in service.methods
    })


@dataclass
class RunningRouter:
    """A started router and what it owns."""

    server: grpc.aio.Server
    port: int
    cluster: Cluster
    health: HealthServicer
    _watch: asyncio.Task

    def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        self._set_health(False)
        self._watch.cancel()
        await self.server.stop(grace)
        await self.cluster.close()


def _health_gauges(cluster: Cluster) -> dict[str, float]:
    return {"router_replicas_healthy": sum(r.healthy is True for r in cluster.replicas),
            "router_shards_reachable": sum(any(r.healthy is not False for r in s.replicas) for s in cluster.shards)}


async def create_router(config: RouterConfig) -> RunningRouter:
    """Binds the port and starts routing. Health: NOT_SERVING until the first round of replica checks,
    then SERVING while some replica is healthy (a router with some shards down still answers, partially)."""
    cluster = Cluster(config.shards, config.upstream, config.health_interval_s, config.shard_timeout_s)
    server = grpc.aio.server(options=program.server_options(config.upstream.max_message_bytes),
                             interceptors=[MalformedRequests(SERVICE_NAMES)])  # unparseable requests: INVALID_ARGUMENT
    search_grpc.add_SearchServiceServicer_to_server(RouterSearch(cluster, config.shard_timeout_s), server)
    writes = Writes(cluster, config.shard_timeout_s, config.replica_writes)
    index_grpc.add_IndexServiceServicer_to_server(RouterIndex(cluster, config.shard_timeout_s, writes), server)
    record_grpc.add_RecordServiceServicer_to_server(RouterRecords(cluster, config.shard_timeout_s, writes), server)
    server.add_generic_rpc_handlers((_ingest_handler(cluster),))
    port, health_servicer = program.listen(server, SERVICE_NAMES, config.host, config.port, config.tls_cert,
                                           config.tls_key, config.tls_client_ca)
    if config.metrics_port:
        serve_metrics(config.metrics_port, [lambda: _health_gauges(cluster)])
    running = RunningRouter(server, port, cluster, health_servicer, None)  # type: ignore[arg-type]
    running._set_health(False)
    await server.start()
    running._watch = asyncio.create_task(cluster.watch(lambda: running._set_health(cluster.reachable())))
    return running


async def serve(config: RouterConfig) -> None:
    """Runs the router until SIGINT or SIGTERM, then drains gracefully."""
    running = await create_router(config)
    log.info("routing on port %d to %d shard(s): %s", running.port, len(config.shards),
             " | ".join(",".join(s) for s in config.shards))
    print(f"clipsearch router listening on port {running.port}", flush=True)
    await program.stop_signals().wait()
    log.info("shutting down (grace %.1fs)", config.grace_s)
    await running.stop(config.grace_s)


def main(argv: Sequence[str] | None = None) -> int:
    return program.main("router", argv, "clipsearch router",
                        "Route searches and writes to the search servers holding the shards of one collection.",
                        lambda args: serve(RouterConfig.from_args(args)))
