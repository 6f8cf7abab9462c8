from clipsearch.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetRecordsRequest(_message.Message):
    __slots__ = ("ids", "allow_missing", "include_vectors", "include_thumbnails", "min_position")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    include_vectors: bool
    include_thumbnails: bool
    min_position: int
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ..., include_vectors: _Optional[bool] = ..., include_thumbnails: _Optional[bool] = ..., min_position: _Optional[int] = ...) -> None: ...

class GetRecordsResponse(_message.Message):
    __slots__ = ("records", "missing_ids")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("id", "uri", "metadata", "fields", "submitted_at_ms", "updated_at_ms", "model", "vector", "thumbnail")
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
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    metadata: _containers.ScalarMap[str, str]
    fields: _containers.MessageMap[str, _types_pb2.Value]
    submitted_at_ms: int
    updated_at_ms: int
    model: _types_pb2.ModelInfo
    vector: bytes
    thumbnail: _types_pb2.Thumbnail
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., fields: _Optional[_Mapping[str, _types_pb2.Value]] = ..., submitted_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., model: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ..., vector: _Optional[bytes] = ..., thumbnail: _Optional[_Union[_types_pb2.Thumbnail, _Mapping]] = ...) -> None: ...

class CountRecordsRequest(_message.Message):
    __slots__ = ("filter", "min_position")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    filter: _types_pb2.Filter
    min_position: int
    def __init__(self, filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., min_position: _Optional[int] = ...) -> None: ...

class CountRecordsResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...
