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
from .records_file import ImportResult, RecordsFileError, export_records, import_records
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
    Record,
    RecordPage,
    RecordsDeleted,
    SearchPage,
    SearchResult,
    Submission,
    Term,
    Thumbnail,
    UpdateResult,
)

__all__ = [
    "DEFAULT_SERVER",
    "AsyncClient",
    "Client",
    "Connection",
    "ClipsearchError",
    "DeadlineExceededError",
    "Deletion",
    "EmbedInput",
    "Embedding",
    "Embeddings",
    "FailedPreconditionError",
    "Failure",
    "ImageInput",
    "ImportResult",
    "IndexStats",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "Query",
    "Record",
    "RecordPage",
    "RecordsDeleted",
    "RecordsFileError",
    "ResourceExhaustedError",
    "SearchPage",
    "SearchResult",
    "Submission",
    "Term",
    "Thumbnail",
    "UnauthenticatedError",
    "UnavailableError",
    "UpdateResult",
    "export_records",
    "import_records",
]

__version__ = "0.1.0"
