"""Search filters: validation of the typed `Filter` message and its evaluation to the matching labels.

A filter is evaluated as a whole, never per candidate: each leaf condition is one SQL query over the
store's covering index on fields(key, value, type, label) and returns a sorted label array; AND, OR
and NOT are numpy set operations (NOT is taken against the live labels). Only live images have rows
in the fields table, so replaced and deleted images never match (tombstones and filters combine).
"""

from __future__ import annotations

import math

import numpy as np

from clipsearch.v1 import types_pb2
from clipsearch_core.errors import InvalidArgument
from clipsearch_server.storage.fields import (
    MAX_KEY_CHARS,
    MAX_STRING_CHARS,
    T_BOOL,
    T_FLOAT,
    T_INT,
    T_LIST,
    T_STRING,
    T_TIME,
)
from clipsearch_server.storage.records import ImageStore

__all__ = ["MAX_ANY_OF", "MAX_DEPTH", "MAX_NODES", "Filter", "check", "key", "matching_labels"]

Filter = types_pb2.Filter  # a filter as the API gives it; the planner (query.py) treats it as opaque

MAX_DEPTH = 8  # nesting of all/any/not; a leaf alone is depth 1
MAX_NODES = 256  # conditions in one filter, all/any/not included
MAX_ANY_OF = 1024  # values in one match.any_of


def key(flt: Filter | None) -> bytes:
    """Equal filters have equal keys (queries with equal keys share a filter evaluation and a batched search)."""
    return b"" if flt is None else b"f" + flt.SerializeToString(deterministic=True)


def check(flt: types_pb2.Filter, field: str = "filter") -> types_pb2.Filter:
    """Validates a filter against the limits; raises InvalidArgument naming the part and the limit."""
    nodes = [0]
    _check(flt, field, 1, nodes)
    return flt


def _check(flt: types_pb2.Filter, where: str, depth: int, nodes: list[int]) -> None:
    nodes[0] += 1
    if nodes[0] > MAX_NODES:
        raise InvalidArgument(f"filter has more than {MAX_NODES} conditions, the limit")
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{where} nests deeper than {MAX_DEPTH} levels, the limit")
    kind = flt.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"{where} is empty; set one of all, any, not, match, range, time_range, exists")
    if kind in ("all", "any"):
        children = getattr(flt, kind).filters
        if not children:
            raise InvalidArgument(f"{where}.{kind} holds no filters; give 1 to {MAX_NODES}")
        for i, child in enumerate(children):
            _check(child, f"{where}.{kind}[{i}]", depth + 1, nodes)
    elif kind == "not":
        _check(flt.__getattribute__("not"), f"{where}.not", depth + 1, nodes)
    elif kind == "exists":
        _field_name(flt.exists, f"{where}.exists")
    elif kind == "match":
        _check_match(flt.match, f"{where}.match")
    elif kind == "range":
        _check_range(flt.range, f"{where}.range", ("gt", "gte", "lt", "lte"))
        for bound in ("gt", "gte", "lt", "lte"):
            if flt.range.HasField(bound) and not math.isfinite(getattr(flt.range, bound)):
                raise InvalidArgument(f"{where}.range.{bound} must be finite")
    else:
        _check_range(flt.time_range, f"{where}.time_range", ("gt_ms", "gte_ms", "lt_ms", "lte_ms"))


def _field_name(name: str, where: str) -> None:
    if not 1 <= len(name) <= MAX_KEY_CHARS:
        raise InvalidArgument(f"{where} must name a field of 1 to {MAX_KEY_CHARS} characters, got {len(name)}")


def _check_match(match: types_pb2.Match, where: str) -> None:
    _field_name(match.field, f"{where}.field")
    which = match.WhichOneof("value")
    if which is None:
        raise InvalidArgument(f"{where} has no value; set any_of, integer or boolean")
    if which == "any_of":
        values = match.any_of.values
        if not 1 <= len(values) <= MAX_ANY_OF:
            raise InvalidArgument(f"{where}.any_of has {len(values)} values; give 1 to {MAX_ANY_OF}")
        for i, value in enumerate(values):
            if len(value) > MAX_STRING_CHARS:
                raise InvalidArgument(f"{where}.any_of[{i}] is {len(value)} characters, "
                                      f"the limit is {MAX_STRING_CHARS}")


def _check_range(rng: types_pb2.Range | types_pb2.TimeRange, where: str, bounds: tuple[str, ...]) -> None:
    _field_name(rng.field, f"{where}.field")
    if not any(rng.HasField(bound) for bound in bounds):
        raise InvalidArgument(f"{where} sets no bound; set at least one of {', '.join(bounds)}")


def matching_labels(store: ImageStore, flt: types_pb2.Filter) -> np.ndarray:
    """Sorted labels of the live images that satisfy a checked filter."""
    kind = flt.WhichOneof("kind")
    if kind == "all":
        result: np.ndarray | None = None
        for child in flt.all.filters:
            labels = matching_labels(store, child)
            result = labels if result is None else np.intersect1d(result, labels, assume_unique=True)
            if not len(result):
                break
        return result if result is not None else _empty()
    if kind == "any":
        parts = [matching_labels(store, child) for child in flt.any.filters]
        return np.unique(np.concatenate(parts)) if parts else _empty()
    if kind == "not":
        return np.setdiff1d(np.sort(store.live_labels()), matching_labels(store, getattr(flt, "not")),
                            assume_unique=True)
    if kind == "exists":
        return store.labels_where("key = ?", [flt.exists])
    if kind == "match":
        match = flt.match
        which = match.WhichOneof("value")
        if which == "any_of":
            values = list(dict.fromkeys(match.any_of.values))
            marks = ",".join("?" * len(values))
            return store.labels_where(f"key = ? AND value IN ({marks}) AND type IN ({T_STRING}, {T_LIST})",
                                      [match.field, *values])
        if which == "integer":
            return store.labels_where(f"key = ? AND value = ? AND type = {T_INT}", [match.field, match.integer])
        return store.labels_where(f"key = ? AND value = ? AND type = {T_BOOL}", [match.field, int(match.boolean)])
    if kind == "range":
        return _range(store, flt.range, ("gt", "gte", "lt", "lte"), f"type IN ({T_INT}, {T_FLOAT})")
    return _range(store, flt.time_range, ("gt_ms", "gte_ms", "lt_ms", "lte_ms"), f"type = {T_TIME}")


_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _range(store: ImageStore, rng: types_pb2.Range | types_pb2.TimeRange, bounds: tuple[str, ...],
           type_sql: str) -> np.ndarray:
    sql, params = ["key = ?"], [rng.field]
    for bound in bounds:
        if rng.HasField(bound):
            sql.append(f"value {_OPS[bound.removesuffix('_ms')]} ?")
            params.append(getattr(rng, bound))
    sql.append(type_sql)
    return store.labels_where(" AND ".join(sql), params)


def _empty() -> np.ndarray:
    return np.empty(0, dtype=np.int64)
