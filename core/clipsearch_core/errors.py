"""The domain exception tree shared by the server and the worker.

Layers raise these; each process maps them once at its edge (the server's gRPC status table in
`clipsearch_server.api.errors`, the worker's job outcome). `transient` says whether the same request may
succeed later (a network error, an HTTP 5xx, a dependency that is loading or down): those map to
UNAVAILABLE, which clients retry; everything else is permanent and never retried.
"""

from __future__ import annotations

__all__ = [
    "FailedPrecondition",
    "ImageLoadError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceError",
    "Unavailable",
]


class ServiceError(Exception):
    """Base of the errors reported to callers with a specific status."""

    transient: bool = False


class InvalidArgument(ServiceError):
    """The request is malformed; retrying it unchanged will fail again."""


class NotFound(ServiceError):
    """The request names something (an image id, a batch) that does not exist."""


class FailedPrecondition(ServiceError):
    """The request is valid but does not fit the server's state (e.g. vectors from another model)."""


class PermissionDenied(ServiceError):
    """The caller is known but its token's scope does not allow this call."""


class ResourceExhausted(ServiceError):
    """A limit was hit; retry later or with less. `retry_after_s` hints when (sent as "retry-after-ms")."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    """A dependency (Redis, an image host) or the server itself is not ready; retry with backoff."""

    transient = True


class ImageLoadError(InvalidArgument):
    """An image could not be read or decoded; the message says why, in terms a user can act on.

    `transient` is True when trying again later may succeed (a network error, an HTTP 5xx or 429).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
