"""The server's exception hierarchy and the one table that maps it to gRPC status codes.

Layers below the API raise these (or library errors that the table names); the API boundary
(`service.py`) turns them into a gRPC status. Anything not in the table is INTERNAL, logged with a
request id, and the caller sees only that id, never internals.
"""

from __future__ import annotations

import grpc

from clipsearch_worker.images import ImageLoadError
from clipsearch_worker.queue import QueueError

__all__ = [
    "ClipsearchError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Unavailable",
    "status_for",
]


class ClipsearchError(Exception):
    """Base of all errors the server reports to callers with a specific status."""


class InvalidArgument(ClipsearchError):
    """The request is malformed; retrying it unchanged will fail again."""


class NotFound(ClipsearchError):
    """The request names something (an image id, a batch) that does not exist."""


class FailedPrecondition(ClipsearchError):
    """The request is valid but does not fit the server's state (e.g. vectors from another model)."""


class ResourceExhausted(ClipsearchError):
    """A limit was hit; retry later or with less. `retry_after_s` hints when (sent as "retry-after-ms")."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ClipsearchError):
    """A dependency (Redis) or the server itself is not ready; retry with backoff."""


_STATUS: dict[type[BaseException], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ImageLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    QueueError: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status for a known error, or None for an unexpected one (which the caller reports as INTERNAL)."""
    for kind in type(exc).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return None
