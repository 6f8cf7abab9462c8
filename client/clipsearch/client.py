"""The synchronous Python client: one channel, typed methods, dataclass results, deadlines on every call."""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import grpc

from .errors import InvalidArgumentError, from_rpc_error
from .types import Failure, ImageInput, IndexStats, Progress, SearchResult, Submission
from .v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    ingest_service_pb2 as ingest_pb,
    ingest_service_pb2_grpc as ingest_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
)

__all__ = ["DEFAULT_SERVER", "Client"]

DEFAULT_SERVER = "localhost:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Read-only calls are retried on UNAVAILABLE by gRPC itself; writes are idempotent by id, so
# SubmitImages is retried too. Nothing else is retried.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "clipsearch.v1.SearchService"},
                    {"service": "clipsearch.v1.IngestService"},
                    {"service": "clipsearch.v1.IndexService", "method": "GetIndexStats"},
                    {"service": "clipsearch.v1.IndexService", "method": "DeleteImages"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def _results(items: Iterable) -> list[SearchResult]:
    return [SearchResult(r.id, float(r.score), r.uri, dict(r.metadata)) for r in items]


class Client:
    """A connection to a clipsearch server.

    server: "host:port" (default $CLIPSEARCH_SERVER or localhost:50051).
    timeout: default deadline of each call, in seconds.
    """

    def __init__(self, server: str | None = None, timeout: float = 30.0) -> None:
        self.server = server or os.environ.get("CLIPSEARCH_SERVER") or DEFAULT_SERVER
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.server,
            options=[
                ("grpc.service_config", _SERVICE_CONFIG),
                ("grpc.enable_retries", 1),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._search = search_grpc.SearchServiceStub(self._channel)
        self._ingest = ingest_grpc.IngestServiceStub(self._channel)
        self._index = index_grpc.IndexServiceStub(self._channel)

    def _call(self, method, request, timeout: float | None):  # type: ignore[no-untyped-def]
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def text_search(self, text: str, k: int = 10, *, timeout: float | None = None) -> list[SearchResult]:
        """The k images that best match `text`, best first."""
        reply = self._call(self._search.TextSearch, search_pb.TextSearchRequest(text=text, k=k), timeout)
        return _results(reply.results)

    def image_search(
        self,
        image: bytes | None = None,
        *,
        uri: str | None = None,
        id: str | None = None,  # noqa: A002 - mirrors the API field
        k: int = 10,
        timeout: float | None = None,
    ) -> list[SearchResult]:
        """The k images most similar to a query image given as bytes, a uri, or an indexed image's id."""
        given = [name for name, value in (("image", image), ("uri", uri), ("id", id)) if value is not None]
        if len(given) != 1:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of image, uri or id")
        request = search_pb.ImageSearchRequest(k=k, **{given[0]: {"image": image, "uri": uri, "id": id}[given[0]]})
        return _results(self._call(self._search.ImageSearch, request, timeout).results)

    def submit(
        self, images: Sequence[ImageInput], batch_id: str = "", *, timeout: float | None = None
    ) -> Submission:
        """Queues images for indexing (at most 1000 per call). Pass `batch_id` to add to an earlier batch."""
        request = ingest_pb.SubmitImagesRequest(
            batch_id=batch_id,
            images=[ingest_pb.ImageSubmission(id=i.id, image=i.image, uri=i.uri, metadata=i.metadata) for i in images],
        )
        reply = self._call(self._ingest.SubmitImages, request, timeout)
        return Submission(reply.batch_id, list(reply.ids))

    def progress(self, batch_id: str = "", *, timeout: float | None = None) -> Progress:
        """Ingestion counts of one batch, or of the whole service."""
        p = self._call(
            self._ingest.GetIngestProgress, ingest_pb.GetIngestProgressRequest(batch_id=batch_id), timeout
        ).progress
        return Progress(p.submitted, p.pending, p.indexed, p.failed)

    def failures(self, batch_id: str = "", limit: int = 100, *, timeout: float | None = None) -> list[Failure]:
        """The newest ingestion failures with their reasons."""
        reply = self._call(
            self._ingest.ListFailures, ingest_pb.ListFailuresRequest(batch_id=batch_id, limit=limit), timeout
        )
        return [Failure(f.id, f.uri, f.reason, f.batch_id, f.failed_at_ms, f.attempts) for f in reply.failures]

    def retry_failures(
        self, batch_id: str = "", ids: Sequence[str] = (), *, timeout: float | None = None
    ) -> tuple[list[str], list[str]]:
        """Queues failed images again (all, one batch's, or `ids`). Returns (retried ids, expired ids)."""
        reply = self._call(
            self._ingest.RetryFailures, ingest_pb.RetryFailuresRequest(batch_id=batch_id, ids=list(ids)), timeout
        )
        return list(reply.retried), list(reply.expired)

    def delete(self, ids: Sequence[str], *, timeout: float | None = None) -> tuple[list[str], list[str]]:
        """Deletes images by id. Returns (deleted ids, ids that were not found). Idempotent."""
        reply = self._call(self._index.DeleteImages, index_pb.DeleteImagesRequest(ids=list(ids)), timeout)
        return list(reply.deleted), list(reply.not_found)

    def stats(self, *, timeout: float | None = None) -> IndexStats:
        """Index size, model and parameters."""
        s = self._call(self._index.GetIndexStats, index_pb.GetIndexStatsRequest(), timeout)
        return IndexStats(
            s.count, s.model.name, s.model.dim, s.index_type, s.hnsw_m, s.ef_construction, s.ef_search, s.stale_entries
        )

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Blocks until the channel connects (the server is up), or raises UnavailableError."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            raise from_rpc_error(_Unavailable(f"server {self.server} not reachable within {timeout}s")) from exc

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Unavailable(grpc.RpcError):
    def __init__(self, details: str) -> None:
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details
