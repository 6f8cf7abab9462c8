from clipsearch.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageSubmission(_message.Message):
    __slots__ = ("id", "image", "uri", "metadata", "fields")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    uri: str
    metadata: _containers.ScalarMap[str, str]
    fields: _containers.MessageMap[str, _types_pb2.Value]
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., fields: _Optional[_Mapping[str, _types_pb2.Value]] = ...) -> None: ...

class SubmitImagesRequest(_message.Message):
    __slots__ = ("images", "batch_id", "request_id")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageSubmission]
    batch_id: str
    request_id: str
    def __init__(self, images: _Optional[_Iterable[_Union[ImageSubmission, _Mapping]]] = ..., batch_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitImagesResponse(_message.Message):
    __slots__ = ("batch_id", "ids")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batch_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetIngestProgressRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class IngestProgress(_message.Message):
    __slots__ = ("submitted", "pending", "indexed", "failed")
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    submitted: int
    pending: int
    indexed: int
    failed: int
    def __init__(self, submitted: _Optional[int] = ..., pending: _Optional[int] = ..., indexed: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class GetIngestProgressResponse(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: IngestProgress
    def __init__(self, progress: _Optional[_Union[IngestProgress, _Mapping]] = ...) -> None: ...

class ListFailuresRequest(_message.Message):
    __slots__ = ("batch_id", "limit")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    limit: int
    def __init__(self, batch_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class IngestFailure(_message.Message):
    __slots__ = ("id", "uri", "reason", "batch_id", "failed_at_ms", "attempts")
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    reason: str
    batch_id: str
    failed_at_ms: int
    attempts: int
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., reason: _Optional[str] = ..., batch_id: _Optional[str] = ..., failed_at_ms: _Optional[int] = ..., attempts: _Optional[int] = ...) -> None: ...

class ListFailuresResponse(_message.Message):
    __slots__ = ("failures",)
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    failures: _containers.RepeatedCompositeFieldContainer[IngestFailure]
    def __init__(self, failures: _Optional[_Iterable[_Union[IngestFailure, _Mapping]]] = ...) -> None: ...

class RetryFailuresRequest(_message.Message):
    __slots__ = ("batch_id", "ids")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batch_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RetryFailuresResponse(_message.Message):
    __slots__ = ("retried", "expired")
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    retried: _containers.RepeatedScalarFieldContainer[str]
    expired: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, retried: _Optional[_Iterable[str]] = ..., expired: _Optional[_Iterable[str]] = ...) -> None: ...

class GetQueueStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("name", "last_seen_ms", "alive", "processed", "device", "model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    last_seen_ms: int
    alive: bool
    processed: int
    device: str
    model: str
    def __init__(self, name: _Optional[str] = ..., last_seen_ms: _Optional[int] = ..., alive: _Optional[bool] = ..., processed: _Optional[int] = ..., device: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class GetQueueStatusResponse(_message.Message):
    __slots__ = ("jobs", "in_flight", "lag", "queued_bytes", "workers")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    jobs: int
    in_flight: int
    lag: int
    queued_bytes: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, jobs: _Optional[int] = ..., in_flight: _Optional[int] = ..., lag: _Optional[int] = ..., queued_bytes: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...
