from clipsearch.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IndexTraining(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_TRAINING_UNSPECIFIED: _ClassVar[IndexTraining]
    INDEX_TRAINING_NOT_NEEDED: _ClassVar[IndexTraining]
    INDEX_TRAINING_WAITING_FOR_DATA: _ClassVar[IndexTraining]
    INDEX_TRAINING_TRAINING: _ClassVar[IndexTraining]
    INDEX_TRAINING_TRAINED: _ClassVar[IndexTraining]
INDEX_TRAINING_UNSPECIFIED: IndexTraining
INDEX_TRAINING_NOT_NEEDED: IndexTraining
INDEX_TRAINING_WAITING_FOR_DATA: IndexTraining
INDEX_TRAINING_TRAINING: IndexTraining
INDEX_TRAINING_TRAINED: IndexTraining

class VectorRecord(_message.Message):
    __slots__ = ("id", "vector", "uri", "metadata", "submitted_at_ms", "fields", "thumbnail")
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
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: bytes
    uri: str
    metadata: _containers.ScalarMap[str, str]
    submitted_at_ms: int
    fields: _containers.MessageMap[str, _types_pb2.Value]
    thumbnail: _types_pb2.Thumbnail
    def __init__(self, id: _Optional[str] = ..., vector: _Optional[bytes] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., submitted_at_ms: _Optional[int] = ..., fields: _Optional[_Mapping[str, _types_pb2.Value]] = ..., thumbnail: _Optional[_Union[_types_pb2.Thumbnail, _Mapping]] = ...) -> None: ...

class UpsertVectorsRequest(_message.Message):
    __slots__ = ("model", "records")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    model: _types_pb2.ModelInfo
    records: _containers.RepeatedCompositeFieldContainer[VectorRecord]
    def __init__(self, model: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ..., records: _Optional[_Iterable[_Union[VectorRecord, _Mapping]]] = ...) -> None: ...

class UpsertVectorsResponse(_message.Message):
    __slots__ = ("upserted", "position")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    position: int
    def __init__(self, upserted: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class GetIndexStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetIndexStatsResponse(_message.Message):
    __slots__ = ("count", "model", "index_type", "hnsw_m", "ef_construction", "ef_search", "stale_entries", "store_kind", "applied_position", "store_position", "lag_ms", "shard_index", "shard_count", "shards_answered", "index_kind", "index_spec", "nlist", "nprobe", "rerank", "memory_bytes", "bytes_per_vector", "disk_bytes", "training", "trained_on", "train_min", "index_choice")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    HNSW_M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    STALE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    STORE_KIND_FIELD_NUMBER: _ClassVar[int]
    APPLIED_POSITION_FIELD_NUMBER: _ClassVar[int]
    STORE_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_SPEC_FIELD_NUMBER: _ClassVar[int]
    NLIST_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ON_FIELD_NUMBER: _ClassVar[int]
    TRAIN_MIN_FIELD_NUMBER: _ClassVar[int]
    INDEX_CHOICE_FIELD_NUMBER: _ClassVar[int]
    count: int
    model: _types_pb2.ModelInfo
    index_type: str
    hnsw_m: int
    ef_construction: int
    ef_search: int
    stale_entries: int
    store_kind: str
    applied_position: int
    store_position: int
    lag_ms: int
    shard_index: int
    shard_count: int
    shards_answered: int
    index_kind: str
    index_spec: str
    nlist: int
    nprobe: int
    rerank: int
    memory_bytes: int
    bytes_per_vector: float
    disk_bytes: int
    training: IndexTraining
    trained_on: int
    train_min: int
    index_choice: str
    def __init__(self, count: _Optional[int] = ..., model: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ..., index_type: _Optional[str] = ..., hnsw_m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ..., stale_entries: _Optional[int] = ..., store_kind: _Optional[str] = ..., applied_position: _Optional[int] = ..., store_position: _Optional[int] = ..., lag_ms: _Optional[int] = ..., shard_index: _Optional[int] = ..., shard_count: _Optional[int] = ..., shards_answered: _Optional[int] = ..., index_kind: _Optional[str] = ..., index_spec: _Optional[str] = ..., nlist: _Optional[int] = ..., nprobe: _Optional[int] = ..., rerank: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., bytes_per_vector: _Optional[float] = ..., disk_bytes: _Optional[int] = ..., training: _Optional[_Union[IndexTraining, str]] = ..., trained_on: _Optional[int] = ..., train_min: _Optional[int] = ..., index_choice: _Optional[str] = ...) -> None: ...

class DeleteImagesRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteImagesResponse(_message.Message):
    __slots__ = ("deleted", "not_found", "position")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    not_found: _containers.RepeatedScalarFieldContainer[str]
    position: int
    def __init__(self, deleted: _Optional[_Iterable[str]] = ..., not_found: _Optional[_Iterable[str]] = ..., position: _Optional[int] = ...) -> None: ...
