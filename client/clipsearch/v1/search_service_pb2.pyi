from clipsearch.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextSearchRequest(_message.Message):
    __slots__ = ("text", "k", "filter", "min_score", "min_position", "forbid_partial", "include_thumbnails", "page_token", "collapse_threshold")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    FORBID_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLAPSE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    text: str
    k: int
    filter: _types_pb2.Filter
    min_score: float
    min_position: int
    forbid_partial: bool
    include_thumbnails: bool
    page_token: str
    collapse_threshold: float
    def __init__(self, text: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., min_score: _Optional[float] = ..., min_position: _Optional[int] = ..., forbid_partial: _Optional[bool] = ..., include_thumbnails: _Optional[bool] = ..., page_token: _Optional[str] = ..., collapse_threshold: _Optional[float] = ...) -> None: ...

class TextSearchResponse(_message.Message):
    __slots__ = ("results", "shards_total", "shards_answered", "partial", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    shards_total: int
    shards_answered: int
    partial: bool
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ..., shards_total: _Optional[int] = ..., shards_answered: _Optional[int] = ..., partial: _Optional[bool] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ImageSearchRequest(_message.Message):
    __slots__ = ("image", "uri", "id", "k", "filter", "min_score", "min_position", "forbid_partial", "include_thumbnails", "page_token", "collapse_threshold")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    FORBID_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLAPSE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    uri: str
    id: str
    k: int
    filter: _types_pb2.Filter
    min_score: float
    min_position: int
    forbid_partial: bool
    include_thumbnails: bool
    page_token: str
    collapse_threshold: float
    def __init__(self, image: _Optional[bytes] = ..., uri: _Optional[str] = ..., id: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., min_score: _Optional[float] = ..., min_position: _Optional[int] = ..., forbid_partial: _Optional[bool] = ..., include_thumbnails: _Optional[bool] = ..., page_token: _Optional[str] = ..., collapse_threshold: _Optional[float] = ...) -> None: ...

class ImageSearchResponse(_message.Message):
    __slots__ = ("results", "shards_total", "shards_answered", "partial", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    shards_total: int
    shards_answered: int
    partial: bool
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ..., shards_total: _Optional[int] = ..., shards_answered: _Optional[int] = ..., partial: _Optional[bool] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetThumbnailsRequest(_message.Message):
    __slots__ = ("ids", "allow_missing")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    allow_missing: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class GetThumbnailsResponse(_message.Message):
    __slots__ = ("thumbnails", "not_found")
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    thumbnails: _containers.RepeatedCompositeFieldContainer[ImageThumbnail]
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, thumbnails: _Optional[_Iterable[_Union[ImageThumbnail, _Mapping]]] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class ImageThumbnail(_message.Message):
    __slots__ = ("id", "thumbnail")
    ID_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    thumbnail: _types_pb2.Thumbnail
    def __init__(self, id: _Optional[str] = ..., thumbnail: _Optional[_Union[_types_pb2.Thumbnail, _Mapping]] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("queries", "min_position", "forbid_partial")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    MIN_POSITION_FIELD_NUMBER: _ClassVar[int]
    FORBID_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[BatchQuery]
    min_position: int
    forbid_partial: bool
    def __init__(self, queries: _Optional[_Iterable[_Union[BatchQuery, _Mapping]]] = ..., min_position: _Optional[int] = ..., forbid_partial: _Optional[bool] = ...) -> None: ...

class BatchQuery(_message.Message):
    __slots__ = ("text", "image", "uri", "id", "vector", "terms", "k", "filter", "min_score", "page_token", "collapse_threshold")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLAPSE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    uri: str
    id: str
    vector: bytes
    terms: WeightedTerms
    k: int
    filter: _types_pb2.Filter
    min_score: float
    page_token: str
    collapse_threshold: float
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., uri: _Optional[str] = ..., id: _Optional[str] = ..., vector: _Optional[bytes] = ..., terms: _Optional[_Union[WeightedTerms, _Mapping]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., min_score: _Optional[float] = ..., page_token: _Optional[str] = ..., collapse_threshold: _Optional[float] = ...) -> None: ...

class WeightedTerms(_message.Message):
    __slots__ = ("terms",)
    TERMS_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedCompositeFieldContainer[QueryTerm]
    def __init__(self, terms: _Optional[_Iterable[_Union[QueryTerm, _Mapping]]] = ...) -> None: ...

class QueryTerm(_message.Message):
    __slots__ = ("text", "image", "uri", "id", "vector", "weight")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    uri: str
    id: str
    vector: bytes
    weight: float
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., uri: _Optional[str] = ..., id: _Optional[str] = ..., vector: _Optional[bytes] = ..., weight: _Optional[float] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results", "shards_total", "shards_answered", "partial")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    shards_total: int
    shards_answered: int
    partial: bool
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ..., shards_total: _Optional[int] = ..., shards_answered: _Optional[int] = ..., partial: _Optional[bool] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class EmbedInput(_message.Message):
    __slots__ = ("text", "image", "uri")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    uri: str
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., uri: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[EmbedInput]
    def __init__(self, inputs: _Optional[_Iterable[_Union[EmbedInput, _Mapping]]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector",)
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: bytes
    def __init__(self, vector: _Optional[bytes] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "embeddings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    model: _types_pb2.ModelInfo
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, model: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...
