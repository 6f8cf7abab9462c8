"""The gRPC API: typed asyncio servicers that validate requests, delegate, and map errors.

Nothing here searches, encodes or queues: each method checks its request with `validation`,
calls the engine or the ingestor, and converts the result to protobuf. `_rpc` is the one
boundary where exceptions become gRPC statuses (through `errors.status_for`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

import grpc

from clipsearch.v1 import (
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
from clipsearch_core import pages
from clipsearch_server.index.kinds import IndexReport
from clipsearch_server.ingest.ingestor import Ingestor, QueuedImage
from clipsearch_server.search import filters
from clipsearch_server.search.engine import Engine, EngineSlot
from clipsearch_server.search.query import Page
from clipsearch_server.storage import fields as typed
from clipsearch_server.storage.records import ImageRecord, StoredRecord

from . import search_api, validation as check
from .boundary import boundary
from .errors import InvalidArgument
from .security import SERVICE_NAMES

__all__ = ["SERVICE_NAMES", "IndexServicer", "IngestServicer", "RecordServicer", "SearchServicer", "add_servicers"]



_rpc = boundary()  # every handler's API boundary: statuses, request ids for internal errors, metrics


async def _results(engine: Engine, page: Page, include_thumbnails: bool) -> list[types_pb2.SearchResult]:
    """A page's protobuf results, each with its inline thumbnail when asked for (empty for images without one)."""
    results = search_api.results(page)
    if include_thumbnails:
        found = await engine.thumbnails([r.id for r in results])
        for r in results:
            if r.id in found:
                r.thumbnail, r.thumbnail_mime_type = found[r.id]
    return results


class SearchServicer(search_grpc.SearchServiceServicer):
    def __init__(self, slot: EngineSlot) -> None:
        self._slot = slot

    async def _one(self, request: Any, kind: str | None) -> tuple[list[types_pb2.SearchResult], str]:
        """A TextSearch or ImageSearch (query oneof `kind`): its page of results and next page token."""
        engine = self._slot.get()
        check.k_with_thumbnails(request.k, request.include_thumbnails)
        await engine.wait_position(check.min_position(request.min_position))
        page, = await engine.search([await search_api.build(engine, request, kind)])
        return await _results(engine, page, request.include_thumbnails), page.next_page_token

    @_rpc
    async def TextSearch(
        self, request: search_pb.TextSearchRequest, context: grpc.aio.ServicerContext
    ) -> search_pb.TextSearchResponse:
        results, token = await self._one(request, "text")
        return search_pb.TextSearchResponse(results=results, next_page_token=token)

    @_rpc
    async def ImageSearch(
        self, request: search_pb.ImageSearchRequest, context: grpc.aio.ServicerContext
    ) -> search_pb.ImageSearchResponse:
        results, token = await self._one(request, request.WhichOneof("query"))
        return search_pb.ImageSearchResponse(results=results, next_page_token=token)

    @_rpc
    async def BatchSearch(
        self, request: search_pb.BatchSearchRequest, context: grpc.aio.ServicerContext
    ) -> search_pb.BatchSearchResponse:
        engine = self._slot.get()
        await engine.wait_position(check.min_position(request.min_position))
        found = await engine.search(await search_api.batch(engine, request))
        return search_pb.BatchSearchResponse(results=[
            search_pb.BatchResult(results=search_api.results(page), next_page_token=page.next_page_token)
            for page in found])

    @_rpc
    async def GetThumbnails(
        self, request: search_pb.GetThumbnailsRequest, context: grpc.aio.ServicerContext
    ) -> search_pb.GetThumbnailsResponse:
        ids = check.image_ids(request.ids, check.MAX_THUMBNAIL_IDS)
        found = await self._slot.get().thumbnails(ids)
        missing = check.thumbnails_missing(ids, found, request.allow_missing)
        return search_pb.GetThumbnailsResponse(
            thumbnails=[search_pb.ImageThumbnail(id=image_id, thumbnail=types_pb2.Thumbnail(
                data=found[image_id][0], mime_type=found[image_id][1])) for image_id in ids if image_id in found],
            not_found=missing,
        )

    @_rpc
    async def Embed(
        self, request: search_pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> search_pb.EmbedResponse:
        return await search_api.embed(self._slot.get(), request)


class IngestServicer(ingest_grpc.IngestServiceServicer):
    def __init__(self, ingestor: Ingestor, max_image_bytes: int) -> None:
        self._ingestor = ingestor
        self._max_image_bytes = max_image_bytes

    def _queued_image(self, i: int, img: ingest_pb.ImageSubmission) -> QueuedImage:
        where = f"images[{i}]"
        if img.id:
            check.image_id(img.id, f"{where}.id")
        if not img.image and not img.uri:
            raise InvalidArgument(f"{where} has neither image bytes nor a uri")
        if len(img.image) > self._max_image_bytes:
            raise InvalidArgument(f"{where}.image is {len(img.image)} bytes, the limit is {self._max_image_bytes}")
        if img.uri and not img.image:
            check.uri(img.uri, f"{where}.uri")
        else:
            check.label_uri(img.uri, f"{where}.uri")
        metadata = check.metadata(img.metadata, f"{where}.metadata")
        return QueuedImage(img.id, img.image, img.uri, metadata, typed.validate(img.fields, metadata, where))

    @_rpc
    async def SubmitImages(
        self, request: ingest_pb.SubmitImagesRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb.SubmitImagesResponse:
        check.count(len(request.images), check.MAX_SUBMIT_IMAGES, "images")
        if request.batch_id:
            check.image_id(request.batch_id, "batch_id")
        check.request_id(request.request_id)
        images = [self._queued_image(i, img) for i, img in enumerate(request.images)]
        batch_id, ids = await asyncio.to_thread(self._ingestor.submit, images, request.batch_id, request.request_id)
        return ingest_pb.SubmitImagesResponse(batch_id=batch_id, ids=ids)

    @_rpc
    async def GetIngestProgress(
        self, request: ingest_pb.GetIngestProgressRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb.GetIngestProgressResponse:
        p = await asyncio.to_thread(self._ingestor.progress, request.batch_id)
        return ingest_pb.GetIngestProgressResponse(
            progress=ingest_pb.IngestProgress(
                submitted=p.submitted, pending=p.pending, indexed=p.indexed, failed=p.failed
            )
        )

    @_rpc
    async def ListFailures(
        self, request: ingest_pb.ListFailuresRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb.ListFailuresResponse:
        limit = check.failures_limit(request.limit)
        found = await asyncio.to_thread(self._ingestor.failures, request.batch_id, limit)
        return ingest_pb.ListFailuresResponse(
            failures=[
                ingest_pb.IngestFailure(
                    id=f.id, uri=f.uri, reason=f.reason, batch_id=f.batch_id, failed_at_ms=f.failed_at_ms,
                    attempts=f.attempts,
                )
                for f in found
            ]
        )


    @_rpc
    async def RetryFailures(
        self, request: ingest_pb.RetryFailuresRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb.RetryFailuresResponse:
        if len(request.ids) > check.MAX_FAILURES_LIMIT:
            raise InvalidArgument(f"the request holds {len(request.ids)} ids, the limit is {check.MAX_FAILURES_LIMIT}")
        retried, expired = await asyncio.to_thread(self._ingestor.retry, request.batch_id, list(request.ids))
        return ingest_pb.RetryFailuresResponse(retried=retried, expired=expired)


    @_rpc
    async def GetQueueStatus(
        self, request: ingest_pb.GetQueueStatusRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb.GetQueueStatusResponse:
        s = await asyncio.to_thread(self._ingestor.status)
        return ingest_pb.GetQueueStatusResponse(
            jobs=s.jobs, in_flight=s.in_flight, lag=s.lag, queued_bytes=s.queued_bytes,
            workers=[
                ingest_pb.WorkerStatus(name=w.name, last_seen_ms=w.last_seen_ms, alive=w.alive,
                                       processed=w.processed, device=w.device, model=w.model)
                for w in s.workers
            ],
        )


class IndexServicer(index_grpc.IndexServiceServicer):
    def __init__(self, slot: EngineSlot) -> None:
        self._slot = slot

    @_rpc
    async def UpsertVectors(
        self, request: index_pb.UpsertVectorsRequest, context: grpc.aio.ServicerContext
    ) -> index_pb.UpsertVectorsResponse:
        engine = self._slot.get()
        collection = engine.collection
        collection.check_model(request.model.name, request.model.dim)
        check.count(len(request.records), check.MAX_UPSERT_RECORDS, "records")
        vectors = check.vectors([rec.vector for rec in request.records], collection.dim,
                                lambda i: f"records[{i}].vector")
        records = []
        for i, (rec, vector) in enumerate(zip(request.records, vectors)):
            where = f"records[{i}]"
            thumbnail, thumbnail_mime_type = check.thumbnail(rec.thumbnail.data, rec.thumbnail.mime_type,
                                                             f"{where}.thumbnail")
            records.append(
                ImageRecord(
                    id=check.image_id(rec.id, f"{where}.id"),
                    vector=vector,
                    uri=check.label_uri(rec.uri, f"{where}.uri"),
                    metadata=check.metadata(rec.metadata, f"{where}.metadata"),
                    submitted_at_ms=rec.submitted_at_ms,
                    fields=typed.validate(rec.fields, rec.metadata, where),
                    thumbnail=thumbnail,
                    thumbnail_mime_type=thumbnail_mime_type,
                )
            )
        upserted, position = await engine.upsert(records)
        return index_pb.UpsertVectorsResponse(upserted=upserted, position=position)

    @_rpc
    async def DeleteImages(
        self, request: index_pb.DeleteImagesRequest, context: grpc.aio.ServicerContext
    ) -> index_pb.DeleteImagesResponse:
        ids = check.image_ids(request.ids, check.MAX_DELETE_IDS)
        deleted, position = await self._slot.get().delete(ids)
        gone = set(deleted)
        return index_pb.DeleteImagesResponse(deleted=deleted, not_found=[i for i in ids if i not in gone],
                                             position=position)

    @_rpc
    async def GetIndexStats(
        self, request: index_pb.GetIndexStatsRequest, context: grpc.aio.ServicerContext
    ) -> index_pb.GetIndexStatsResponse:
        engine = self._slot.get()
        s = await engine.stats()
        r = engine.replication()
        reply = index_pb.GetIndexStatsResponse(
            store_kind=r.store_kind,
            applied_position=r.applied_position,
            store_position=r.store_position,
            lag_ms=int(r.lag_s * 1000),
            count=s.count,
            model=types_pb2.ModelInfo(name=s.model, dim=s.dim),
            index_type=s.index_type,
            hnsw_m=s.params.m,
            ef_construction=s.params.ef_construction,
            ef_search=s.params.ef_search,
            stale_entries=s.stale_entries,
            shard_index=engine.collection.shard.index,
            shard_count=engine.collection.shard.count,
        )
        if s.index is not None:
            reply.MergeFrom(index_report(s.index))
        return reply


class RecordServicer(record_grpc.RecordServiceServicer):
    """RecordService: the stored records by id, and counts (with the search filters)."""

    def __init__(self, slot: EngineSlot) -> None:
        self._slot = slot

    @_rpc
    async def GetRecords(
        self, request: record_pb.GetRecordsRequest, context: grpc.aio.ServicerContext
    ) -> record_pb.GetRecordsResponse:
        ids = check.record_ids(request.ids, request.include_thumbnails)
        engine = self._slot.get()
        await engine.wait_position(check.min_position(request.min_position))
        found, thumbnails = await engine.records(ids, request.include_vectors, request.include_thumbnails)
        missing = check.records_missing(ids, found, request.allow_missing)
        model = types_pb2.ModelInfo(name=engine.collection.model, dim=engine.collection.dim)
        records = await asyncio.to_thread(_records, [found[i] for i in ids if i in found], model, thumbnails)
        return record_pb.GetRecordsResponse(records=records, missing_ids=missing)

    @_rpc
    async def ScrollRecords(
        self, request: record_pb.ScrollRecordsRequest, context: grpc.aio.ServicerContext
    ) -> record_pb.ScrollRecordsResponse:
        query = pages.scroll_fingerprint(request)
        after = pages.scroll_after(request.cursor, query)
        size = check.page_size(request.page_size, request.include_thumbnails)
        flt = filters.check(request.filter) if request.HasField("filter") else None
        engine = self._slot.get()
        await engine.wait_position(check.min_position(request.min_position))
        found, thumbnails, more = await engine.scroll(flt, after, size, request.include_vectors,
                                                      request.include_thumbnails)
        model = types_pb2.ModelInfo(name=engine.collection.model, dim=engine.collection.dim)
        records = await asyncio.to_thread(_records, found, model, thumbnails)
        return record_pb.ScrollRecordsResponse(
            records=records, next_cursor=pages.scroll_cursor(found[-1].id, query) if more and found else "")

    @_rpc
    async def UpdateRecords(
        self, request: record_pb.UpdateRecordsRequest, context: grpc.aio.ServicerContext
    ) -> record_pb.UpdateRecordsResponse:
        if bool(request.ids) == request.HasField("filter"):
            raise InvalidArgument("give exactly one of ids and filter: the images to update")
        ids = check.image_ids(request.ids, check.MAX_UPDATE_IDS) if request.ids else None
        flt = filters.check(request.filter) if request.HasField("filter") else None
        update = _field_update(request)
        updated, position = await self._slot.get().update(ids, flt, update)
        done = set(updated)
        return record_pb.UpdateRecordsResponse(
            updated=len(updated), position=position,
            not_found=[i for i in dict.fromkeys(ids) if i not in done] if ids is not None else [])

    @_rpc
    async def DeleteRecords(
        self, request: record_pb.DeleteRecordsRequest, context: grpc.aio.ServicerContext
    ) -> record_pb.DeleteRecordsResponse:
        if not request.HasField("filter") and not request.all:
            raise InvalidArgument("give a filter, or set `all` to delete every image")
        flt = filters.check(request.filter) if request.HasField("filter") else None
        deleted, position = await self._slot.get().delete_where(flt, request.all)
        return record_pb.DeleteRecordsResponse(deleted=len(deleted), position=position)

    @_rpc
    async def CountRecords(
        self, request: record_pb.CountRecordsRequest, context: grpc.aio.ServicerContext
    ) -> record_pb.CountRecordsResponse:
        flt = filters.check(request.filter) if request.HasField("filter") else None
        engine = self._slot.get()
        await engine.wait_position(check.min_position(request.min_position))
        return record_pb.CountRecordsResponse(count=await engine.count(flt))


def _field_update(request: record_pb.UpdateRecordsRequest) -> typed.Update:
    """The change an UpdateRecordsRequest asks for (set_fields, set_metadata, unset, replace), checked:
    something to change, no key twice, at most typed.MAX_FIELDS set and unset, values within the limits."""
    if not (request.set_fields or request.set_metadata or request.unset or request.replace):
        raise InvalidArgument("the update changes nothing: give set_fields, set_metadata, unset or replace")
    if request.replace and request.unset:
        raise InvalidArgument("unset cannot be given with replace (replace already removes every key)")
    if len(request.set_fields) + len(request.set_metadata) > typed.MAX_FIELDS:
        raise InvalidArgument(f"the update sets {len(request.set_fields)} fields and {len(request.set_metadata)} "
                              f"metadata entries; the limit is {typed.MAX_FIELDS} together")
    if len(request.unset) > typed.MAX_FIELDS:
        raise InvalidArgument(f"unset holds {len(request.unset)} keys, the limit is {typed.MAX_FIELDS}")
    set_metadata = check.metadata(request.set_metadata, "set_metadata")
    set_fields = typed.validate(request.set_fields, set_metadata, "the update", "set_fields")
    unset = list(dict.fromkeys(request.unset))
    for i, key in enumerate(unset):
        if not key or len(key) > typed.MAX_KEY_CHARS:
            raise InvalidArgument(f"unset[{i}] must be 1 to {typed.MAX_KEY_CHARS} characters, got {len(key)}")
        if key in set_fields or key in set_metadata:
            raise InvalidArgument(f"unset[{i}] {key!r} is also set by the update; give each key once")
    return typed.Update(set_fields, set_metadata, tuple(unset), request.replace)


YIELD_EVERY = 50  # records built between two yields of the GIL (about 1 ms)


def _records(found: Sequence[StoredRecord], model: types_pb2.ModelInfo,
             thumbnails: dict[str, tuple[bytes, str]]) -> list[record_pb.Record]:
    """The Record messages of up to 1000 stored records, built in a thread off the event loop (a page takes
    tens of milliseconds of Python). It lets go of the GIL every YIELD_EVERY records: a thread that holds
    it longer makes every other thread (searches, writes) wait up to the 5 ms switch interval for it at
    each of their steps."""
    out: list[record_pb.Record] = []
    for start in range(0, len(found), YIELD_EVERY):
        out.extend(_record(r, model, thumbnails) for r in found[start:start + YIELD_EVERY])
        time.sleep(0)
    return out


def _record(r: StoredRecord, model: types_pb2.ModelInfo,
            thumbnails: dict[str, tuple[bytes, str]]) -> record_pb.Record:
    """A stored record as the API's Record, with its thumbnail when `thumbnails` has one for it."""
    record = record_pb.Record(id=r.id, uri=r.uri, metadata=r.metadata, fields=r.fields, updated_at_ms=r.updated_ms,
                              submitted_at_ms=r.submitted_ms, model=model, vector=r.vector)
    if r.id in thumbnails:
        data, mime_type = thumbnails[r.id]
        record.thumbnail.CopyFrom(types_pb2.Thumbnail(data=data, mime_type=mime_type))
    return record


_TRAINING = {"not-needed": index_pb.INDEX_TRAINING_NOT_NEEDED,
             "waiting-for-data": index_pb.INDEX_TRAINING_WAITING_FOR_DATA,
             "training": index_pb.INDEX_TRAINING_TRAINING, "trained": index_pb.INDEX_TRAINING_TRAINED}


def index_report(r: IndexReport) -> index_pb.GetIndexStatsResponse:
    """GetIndexStats fields 8-19: the index kind, its parameters, measured memory and training state."""
    return index_pb.GetIndexStatsResponse(
        index_kind=r.kind, index_spec=r.spec, nlist=r.nlist, nprobe=r.nprobe, rerank=r.rerank,
        memory_bytes=r.memory_bytes, bytes_per_vector=r.bytes_per_vector, disk_bytes=r.disk_bytes,
        training=_TRAINING[r.training], trained_on=r.trained_on, train_min=r.train_min, index_choice=r.choice)


def add_servicers(server: grpc.aio.Server, slot: EngineSlot, ingestor: Ingestor, max_image_bytes: int) -> None:
    """Registers the four servicers of a search server on `server`."""
    search_grpc.add_SearchServiceServicer_to_server(SearchServicer(slot), server)
    ingest_grpc.add_IngestServiceServicer_to_server(IngestServicer(ingestor, max_image_bytes), server)
    index_grpc.add_IndexServiceServicer_to_server(IndexServicer(slot), server)
    record_grpc.add_RecordServiceServicer_to_server(RecordServicer(slot), server)
