"""Search requests to planner queries and back: validation of every search field, query vectors, page tokens.

TextSearch, ImageSearch and each BatchSearch query share the fields k, filter, min_score, page_token and
collapse_threshold; `build` checks them and the query's kind (text, image bytes, uri, id, raw vector,
weighted terms), computes the query vector with the engine, and decodes the page token against the
query's fingerprint (its kind and content, filter, min_score and collapse threshold: the same query asked
through TextSearch or BatchSearch has the same fingerprint, so their tokens are interchangeable).
`results` turns a page back into protobuf results. `embed` answers an Embed request: its texts and images
encoded exactly as query vectors are (the same checks, the same micro-batches as concurrent searches).
"""

from __future__ import annotations

import asyncio
import copy
import math
from functools import partial
from typing import Any, Awaitable, Callable

import numpy as np

from clipsearch.v1 import search_service_pb2 as search_pb, types_pb2
from clipsearch_core import pages
from clipsearch_server.search import filters
from clipsearch_server.search.engine import Engine
from clipsearch_server.search.query import MAX_TERMS, MAX_WEIGHT, Page, Query, combine

from . import validation as check
from .errors import InvalidArgument, ServiceError

__all__ = ["batch", "build", "embed", "results"]


async def build(engine: Engine, request: Any, kind: str | None, prefix: str = "") -> Query:
    """The planner query for a request (or batch query) whose query oneof is `kind`.
    Errors name the field with `prefix` (e.g. "queries[3].")."""
    try:
        return await _build(engine, request, kind)
    except ServiceError as exc:
        if not prefix:
            raise
        raise _named(exc, prefix.rstrip(".")) from exc


def _named(exc: ServiceError, where: str) -> ServiceError:
    """The same error (class, code, transient, retry hint) with its message prefixed by `where`, e.g.
    "queries[3]: cannot decode image". A copy: the same error object may reach several queries (a
    micro-batch's failure), each naming its own."""
    named = copy.copy(exc)
    named.args = (f"{where}: {exc}",)
    return named


async def batch(engine: Engine, request: search_pb.BatchSearchRequest) -> list[Query]:
    """The batch's queries, validated in order (the first invalid one fails the whole call, named by index)."""
    check.count(len(request.queries), check.MAX_BATCH, "queries")
    built = await asyncio.gather(  # concurrently, so the texts and images are encoded in micro-batches
        *(build(engine, q, q.WhichOneof("query"), f"queries[{i}].") for i, q in enumerate(request.queries)),
        return_exceptions=True)
    for item in built:
        if isinstance(item, BaseException):
            raise item
    return [item for item in built if isinstance(item, Query)]


async def embed(engine: Engine, request: search_pb.EmbedRequest) -> search_pb.EmbedResponse:
    """The unit vectors of an Embed request's 1 to 64 inputs, in order, with the collection's model.

    Every input is checked before any is encoded (the first invalid one fails the call, named by index).
    Then all are encoded at once, so they share micro-batches with each other and with concurrent
    searches, through the very calls a TextSearch or ImageSearch makes. An input that fails to encode
    (an undecodable image, an unreadable uri) fails the call with its error's own code, named by index
    (the first such input in request order)."""
    check.count(len(request.inputs), check.MAX_EMBED_INPUTS, "inputs")
    encoders = [_embed_input(engine, f"inputs[{i}]", item) for i, item in enumerate(request.inputs)]
    encoded = await asyncio.gather(*(encode() for encode in encoders), return_exceptions=True)
    vectors = []
    for item in encoded:
        if isinstance(item, BaseException):
            raise item
        vectors.append(np.asarray(item, dtype="<f4").tobytes())
    collection = engine.collection
    return search_pb.EmbedResponse(model=types_pb2.ModelInfo(name=collection.model, dim=collection.dim),
                                   embeddings=[search_pb.Embedding(vector=v) for v in vectors])


def _embed_input(engine: Engine, where: str, item: search_pb.EmbedInput) -> Callable[[], Awaitable[np.ndarray]]:
    """Checks one Embed input; returns what encodes it (its errors named by `where`)."""
    kind = item.WhichOneof("input")
    vector: Callable[[], Awaitable[np.ndarray]]
    if kind == "text":
        text = check.text(item.text, f"{where}.text")
        vector = partial(engine.text_vector, text)
    elif kind == "image":
        data, limit = item.image, engine.limits.max_bytes
        if not data:
            raise InvalidArgument(f"{where}.image is empty (0 bytes)")
        if len(data) > limit:
            raise InvalidArgument(f"{where}.image is {len(data)} bytes, the limit is {limit} (the server's "
                                  "--max-image-bytes)")
        vector = partial(engine.image_vector_bytes, data)
    elif kind == "uri":
        uri = check.uri(item.uri, f"{where}.uri")
        vector = partial(engine.image_vector_uri, uri)
    else:
        raise InvalidArgument(f"{where} has nothing set: set one of text, image or uri")

    async def encode() -> np.ndarray:
        try:
            return await vector()
        except ServiceError as exc:
            raise _named(exc, where) from exc

    return encode


async def _build(engine: Engine, request: Any, kind: str | None) -> Query:
    k, min_score = check.k(request.k), check.min_score(request)
    flt = filters.check(request.filter) if request.HasField("filter") else None
    collapse = _collapse(request)
    if kind is None:
        raise InvalidArgument("no query: set one of " + ", ".join(_kinds(request)))
    value = getattr(request, kind)
    exclude: frozenset[str] = frozenset()
    if kind == "terms":
        vector, exclude = await _terms(engine, value)
    else:
        vector, content = await _vector(engine, kind, value, kind)
        if kind == "id":
            exclude = frozenset([str(content)])
    fingerprint = pages.request_fingerprint(request, kind)  # as the router's, when it merges shard pages
    cursor = pages.decode(request.page_token, fingerprint, k) if request.page_token else None
    return Query(vector, k, flt, min_score, cursor, fingerprint, exclude, collapse)


def _kinds(request: Any) -> list[str]:
    return [f.name for f in request.DESCRIPTOR.oneofs_by_name["query"].fields]


def _collapse(request: Any) -> float | None:
    if not request.HasField("collapse_threshold"):
        return None
    value = float(request.collapse_threshold)
    if not (0.0 < value <= 1.0):  # NaN fails too
        raise InvalidArgument(f"collapse_threshold must be a cosine in (0, 1], e.g. 0.95; got {value}")
    return value


async def _vector(engine: Engine, kind: str, value: Any, where: str) -> tuple[np.ndarray, str | bytes]:
    """The unit query vector of one query or term, and the content that identifies it."""
    if kind == "text":
        text = check.text(value)
        return await engine.text_vector(text), text
    if kind == "image":
        if not value:
            raise InvalidArgument(f"{where} is empty (0 bytes)")
        return await engine.image_vector_bytes(value), value
    if kind == "uri":
        uri = check.uri(value, where)
        return await engine.image_vector_uri(uri), uri
    if kind == "id":
        image_id = check.image_id(value, where)
        return await engine.id_vector(image_id), image_id
    if kind == "vector":
        return check.vector(value, engine.collection.dim, where), value
    raise InvalidArgument(f"unknown query kind {kind!r}")


async def _terms(engine: Engine, terms: search_pb.WeightedTerms) -> tuple[np.ndarray, frozenset[str]]:
    """The combined vector of weighted terms and the ids of positive id terms (left out of the results)."""
    if not 1 <= len(terms.terms) <= MAX_TERMS:
        raise InvalidArgument(f"terms holds {len(terms.terms)} terms; give 1 to {MAX_TERMS}")
    vectors, weights, exclude = [], [], set()
    for i, term in enumerate(terms.terms):
        where = f"terms[{i}]"
        weight = float(term.weight) if term.HasField("weight") else 1.0
        if not (math.isfinite(weight) and weight != 0.0 and abs(weight) <= MAX_WEIGHT):
            raise InvalidArgument(f"{where}.weight must be finite, non-zero and within +-{MAX_WEIGHT:g}; got {weight}")
        kind = term.WhichOneof("term")
        if kind is None:
            raise InvalidArgument(f"{where} is empty: set one of text, image, uri, id or vector")
        vector, content = await _vector(engine, kind, getattr(term, kind), f"{where}.{kind}")
        if kind == "id" and weight > 0:
            exclude.add(str(content))
        vectors.append(vector)
        weights.append(weight)
    return combine(vectors, weights), frozenset(exclude)


def results(page: Page) -> list[types_pb2.SearchResult]:
    """Protobuf results of a page, with the ids collapsed into each."""
    collapsed = page.collapsed or [[] for _ in page.hits]
    return [types_pb2.SearchResult(id=h.id, score=h.score, uri=h.uri, metadata=h.metadata, fields=h.fields,
                                   collapsed_ids=ids)
            for h, ids in zip(page.hits, collapsed)]
