"""The CLI's small filter and field syntax, turned into typed values on the client (the server only
ever sees the protobuf `Filter`).

`--where` expressions (each one must hold; give several for AND):
  KEY=VALUE     equal: a string (or a string list containing it); an integer, a number, true/false or
                a date also match integer, float, boolean or timestamp fields with that value
  KEY!=VALUE    not equal (images without KEY match too)
  KEY in A,B,C  a string field equal to one of them, or a string list containing one of them
  KEY>V, KEY>=V, KEY<V, KEY<=V
                a number compares with integer and float fields; a date or time (RFC 3339 / ISO 8601,
                e.g. 2024-01-01 or 2024-01-01T12:00:00Z; UTC when no offset) with timestamp fields
Field JSON (`index --metadata FILE`, `search --json`): strings, numbers, booleans and arrays of strings
map to their types; a timestamp is {"$time": "2024-01-01T12:00:00Z"} (RFC 3339; UTC when no offset).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Mapping, Sequence

from .fields import time_ms
from .v1.types_pb2 import Filter, FilterList, Match, Range, StringList, TimeRange

__all__ = ["fields_from_json", "fields_to_json", "parse_time", "parse_where", "where_filter"]

_EXPR = re.compile(r"^\s*(?P<key>[^\s=!<>]+)\s*(?P<op>>=|<=|!=|=|>|<|\s+in\s+)\s*(?P<value>.*?)\s*$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 / ISO 8601 date or date-time; UTC when it has no offset. ValueError otherwise."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _is_time(text: str) -> bool:
    try:
        parse_time(text)
    except ValueError:
        return False
    return True


def _equal(key: str, value: str) -> Filter:
    options = [Filter(match=Match(field=key, any_of=StringList(values=[value])))]
    if _INTEGER.match(value):
        options.append(Filter(match=Match(field=key, integer=int(value))))
    if _NUMBER.match(value):
        options.append(Filter(range=Range(field=key, gte=float(value), lte=float(value))))
    if value.lower() in ("true", "false"):
        options.append(Filter(match=Match(field=key, boolean=value.lower() == "true")))
    if not _NUMBER.match(value) and _is_time(value):
        ms = time_ms(parse_time(value))
        options.append(Filter(time_range=TimeRange(field=key, gte_ms=ms, lte_ms=ms)))
    return options[0] if len(options) == 1 else Filter(any=FilterList(filters=options))


def parse_where(expression: str) -> Filter:
    """One --where expression as a Filter; ValueError with a message for the user when it is not valid."""
    m = _EXPR.match(expression)
    if not m or not m.group("value"):
        raise ValueError(f"--where {expression!r}: expected KEY=VALUE, KEY!=VALUE, 'KEY in A,B', or KEY>V "
                         "(also >=, <, <=)")
    key, op, value = m.group("key"), m.group("op").strip(), m.group("value")
    if op == "=":
        return _equal(key, value)
    if op == "!=":
        return Filter(**{"not": _equal(key, value)})
    if op == "in":
        values = [v.strip() for v in value.split(",") if v.strip()]
        return Filter(match=Match(field=key, any_of=StringList(values=values)))
    bound = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[op]
    if _NUMBER.match(value):
        return Filter(range=Range(field=key, **{bound: float(value)}))
    if _is_time(value):
        return Filter(time_range=TimeRange(field=key, **{f"{bound}_ms": time_ms(parse_time(value))}))
    raise ValueError(f"--where {expression!r}: {op} needs a number or a date/time (e.g. 2024-01-01), got {value!r}")


def where_filter(expressions: Sequence[str]) -> Filter | None:
    """All expressions must hold (AND); None when there are none."""
    parts = [parse_where(e) for e in expressions]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter(all=FilterList(filters=parts))


def fields_from_json(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Field values from JSON: str, int, float, bool, list of str, or {"$time": RFC 3339}."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            if set(value) != {"$time"} or not isinstance(value["$time"], str):
                raise ValueError(f"{where}: field {key!r}: an object must be {{\"$time\": \"2024-01-01T00:00:00Z\"}}")
            try:
                out[key] = parse_time(value["$time"])
            except ValueError:
                raise ValueError(f"{where}: field {key!r}: {value['$time']!r} is not an RFC 3339 time") from None
        elif isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"{where}: field {key!r}: a list must hold only strings")
            out[key] = value
        elif isinstance(value, (str, int, float, bool)):
            out[key] = value
        else:
            raise ValueError(f"{where}: field {key!r}: null is not a field value")
    return out


def fields_to_json(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Field values as JSON, timestamps as {"$time": RFC 3339 in UTC}."""
    return {key: {"$time": value.isoformat().replace("+00:00", "Z")} if isinstance(value, dt.datetime) else value
            for key, value in fields.items()}
