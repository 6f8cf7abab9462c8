"""The one table that maps the domain errors (`clipsearch_core.errors`) to gRPC status codes.

Layers below the API raise the core's errors; the API boundary (`servicers.py`) turns them into a
gRPC status here. Transient errors (`error.transient`) are UNAVAILABLE whatever their class, so
clients retry them. Anything not in the table is INTERNAL, logged with a request id, and the caller
sees only that id, never internals.
"""

from __future__ import annotations

import grpc

from clipsearch_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

__all__ = [
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceError",
    "Unavailable",
    "status_for",
]

_STATUS: dict[type[BaseException], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status for a known error, or None for an unexpected one (which the caller reports as INTERNAL)."""
    if isinstance(exc, ServiceError) and exc.transient:
        return grpc.StatusCode.UNAVAILABLE
    for kind in type(exc).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return None
