"""Client exceptions: one class per gRPC status a caller may want to handle, all under ClipsearchError."""

from __future__ import annotations

import grpc

__all__ = [
    "ClipsearchError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
]


class ClipsearchError(Exception):
    """A call to the clipsearch server failed. `code` is the gRPC status, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(ClipsearchError):
    """The request was invalid; the message says which field and why."""


class NotFoundError(ClipsearchError):
    """An image id or batch id does not exist."""


class FailedPreconditionError(ClipsearchError):
    """The request does not fit the server's state (for example a model mismatch)."""


class ResourceExhaustedError(ClipsearchError):
    """A size or rate limit was hit."""


class UnavailableError(ClipsearchError):
    """The server (or its queue) cannot be reached right now; retry later."""


class DeadlineExceededError(ClipsearchError):
    """The call did not finish before its deadline."""


class UnauthenticatedError(ClipsearchError):
    """The call carried no valid credentials."""


class PermissionDeniedError(ClipsearchError):
    """The token is valid but its scope does not allow this call (e.g. a read token on DeleteImages);
    the message names the scope needed. Retrying with the same token fails again."""


class InternalError(ClipsearchError):
    """The server hit an unexpected error; its message carries a request id for the logs."""


_BY_CODE: dict[grpc.StatusCode, type[ClipsearchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(exc: grpc.RpcError) -> ClipsearchError:
    """The ClipsearchError subclass for a gRPC error."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    return _BY_CODE.get(code, ClipsearchError)(code, details)
