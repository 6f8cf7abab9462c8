"""clipsearch: text-to-image search. This package is the thin Python client (and the `clipsearch` CLI).

    from clipsearch import Client
    with Client("localhost:50051") as client:
        for hit in client.text_search("a red sports car", k=5):
            print(hit.id, hit.uri, hit.score)

It needs only grpcio and protobuf; the server and worker live in clipsearch_server and clipsearch_worker.
"""

from .client import DEFAULT_SERVER, AsyncClient, Client
from .connection import Connection
from .errors import (
    ClipsearchError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .types import (
    Deletion,
    Failure,
    ImageInput,
    IndexStats,
    Progress,
    Query,
    Record,
    SearchPage,
    SearchResult,
    Submission,
    Term,
    Thumbnail,
)

__all__ = [
    "DEFAULT_SERVER",
    "AsyncClient",
    "Client",
    "Connection",
    "ClipsearchError",
    "DeadlineExceededError",
    "Deletion",
    "FailedPreconditionError",
    "Failure",
    "ImageInput",
    "IndexStats",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "Query",
    "Record",
    "ResourceExhaustedError",
    "SearchPage",
    "SearchResult",
    "Submission",
    "Term",
    "Thumbnail",
    "UnauthenticatedError",
    "UnavailableError",
]

__version__ = "0.1.0"
