"""Typed field values between Python and protobuf: str, int, float, bool, datetime (a timestamp) and
list of str map to clipsearch.v1.Value and back. A naive datetime is taken as UTC."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Mapping, Union

from .v1 import types_pb2

__all__ = ["FieldValue", "from_value", "to_value", "to_values", "from_values"]

FieldValue = Union[str, int, float, bool, dt.datetime, list[str]]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def time_ms(value: dt.datetime) -> int:
    """Milliseconds since the Unix epoch (a naive datetime is UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def to_value(value: Any, key: str = "") -> types_pb2.Value:
    """The protobuf Value of a Python value; ValueError for other types."""
    if isinstance(value, bool):
        return types_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return types_pb2.Value(int_value=value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"field {key!r}: floats must be finite, got {value}")
        return types_pb2.Value(float_value=value)
    if isinstance(value, str):
        return types_pb2.Value(string_value=value)
    if isinstance(value, dt.datetime):
        return types_pb2.Value(time_ms=time_ms(value))
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return types_pb2.Value(string_list=types_pb2.StringList(values=list(value)))
    raise ValueError(f"field {key!r}: {type(value).__name__} is not a field type "
                     "(use str, int, float, bool, datetime or a list of str)")


def from_value(value: types_pb2.Value) -> FieldValue | None:
    """The Python value of a protobuf Value (a timestamp becomes an aware UTC datetime)."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "time_ms":
        try:
            return _EPOCH + dt.timedelta(milliseconds=value.time_ms)
        except OverflowError:  # stored by another client or an older server: beyond datetime's years 1-9999
            return value.time_ms
    if kind == "string_list":
        return list(value.string_list.values)
    scalar: FieldValue = getattr(value, kind)  # string_value, int_value, double_value or bool_value
    return scalar


def to_values(fields: Mapping[str, Any]) -> dict[str, types_pb2.Value]:
    return {key: to_value(value, key) for key, value in fields.items()}


def from_values(fields: Mapping[str, types_pb2.Value]) -> dict[str, FieldValue | None]:
    return {key: from_value(value) for key, value in fields.items()}
