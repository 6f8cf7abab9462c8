"""Typed image fields: their limits, their validation, and their two stored forms.

An image's fields are a `dict[str, types_pb2.Value]` in memory (the API's type: filters and results
use it as it is). Every metadata entry is also a string field (`merged`), so filters and results see one
map. Stored forms:
- JSON (`to_json`/`from_json`): our own format, version FIELDS_FORMAT (1), written and read here by hand,
  never by protobuf's json_format, so that a change of the proto cannot change what is on disk. An
  object mapping each key to {kind: value}, kind one of string_value, int_value, float_value,
  bool_value, time_ms, string_list; int_value and time_ms as decimal strings, float_value a JSON
  number, string_list {"values": [...]} ({} when empty); keys sorted, no spaces: e.g.
  {"n":{"int_value":"3"},"tags":{"string_list":{"values":["a","b"]}}}. Version 1 is, byte for byte,
  what earlier versions wrote (the proto3 JSON of each Value with proto field names), so every store
  written before reads unchanged. It is the images.fields column of the SQLite and PostgreSQL stores
  (their meta table records `fields_format`) and the `fields` entry of a queued job;
- rows (`rows`): one (key, type, value) per field, one per item for a string list, for the store's
  indexed `fields` table that answers a whole filter with one SQL query per condition.

`Update` is a change of an image's fields and metadata without re-encoding (RecordService.UpdateRecords):
keys set (typed or metadata), keys removed, or everything replaced; `Update.apply` gives the image's new
fields and metadata, checked against the same limits as a submission.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping

from clipsearch.v1 import types_pb2
from clipsearch_core.errors import InvalidArgument

__all__ = ["FIELDS_FORMAT", "MAX_FIELDS", "MAX_KEY_CHARS", "MAX_LIST_ITEMS", "MAX_LIST_ITEM_CHARS", "MAX_STRING_CHARS",
           "T_BOOL", "T_FLOAT", "T_INT", "T_LIST", "T_STRING", "T_TIME", "Fields", "Update", "from_json", "merged",
           "rows", "to_json", "validate"]

FIELDS_FORMAT = "1"  # the version of the stored JSON form (to_json), recorded in each store's meta table
MAX_FIELDS = 64  # per image, metadata entries included
MAX_KEY_CHARS = 256
MAX_STRING_CHARS = 4096
MAX_LIST_ITEMS = 256
MAX_LIST_ITEM_CHARS = 256
# time_ms: RFC 3339's range, 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z (what clients can represent)
MIN_TIME_MS, MAX_TIME_MS = -62_135_596_800_000, 253_402_300_799_999

# Type codes of the store's fields table.
T_STRING, T_INT, T_FLOAT, T_BOOL, T_TIME, T_LIST = 1, 2, 3, 4, 5, 6
_TYPE_OF_KIND = {"string_value": T_STRING, "int_value": T_INT, "float_value": T_FLOAT, "bool_value": T_BOOL,
                 "time_ms": T_TIME, "string_list": T_LIST}

Fields = dict[str, types_pb2.Value]


def validate(fields: Mapping[str, types_pb2.Value], metadata: Mapping[str, str], where: str,
             fields_name: str = "") -> Fields:
    """Checks typed fields (and their count with the metadata) against the limits; returns a copy.
    Raises InvalidArgument naming the field and the limit (the map as `fields_name`, default
    "{where}.fields")."""
    total = len(fields) + len(metadata)
    if total > MAX_FIELDS:
        raise InvalidArgument(f"{where} has {len(fields)} fields and {len(metadata)} metadata entries; "
                              f"the limit is {MAX_FIELDS} together")
    out: Fields = {}
    fields_name = fields_name or f"{where}.fields"
    for key, value in fields.items():
        name = f"{fields_name}[{key!r}]"
        if not key or len(key) > MAX_KEY_CHARS:
            raise InvalidArgument(f"{fields_name} keys must be 1 to {MAX_KEY_CHARS} characters, got {len(key)}")
        if key in metadata:
            raise InvalidArgument(f"{name} is also a metadata key; give it in one of the two")
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(f"{name} has no value; set one of string_value, int_value, float_value, "
                                  "bool_value, time_ms, string_list")
        if kind == "string_value" and len(value.string_value) > MAX_STRING_CHARS:
            raise InvalidArgument(f"{name} is {len(value.string_value)} characters, the limit is {MAX_STRING_CHARS}")
        if kind == "float_value" and not math.isfinite(value.float_value):
            raise InvalidArgument(f"{name} is {value.float_value}; floats must be finite")
        if kind == "time_ms" and not MIN_TIME_MS <= value.time_ms <= MAX_TIME_MS:
            raise InvalidArgument(f"{name} is {value.time_ms} ms, outside 0001-01-01..9999-12-31 (RFC 3339)")
        if kind == "string_list":
            items = value.string_list.values
            if len(items) > MAX_LIST_ITEMS:
                raise InvalidArgument(f"{name} has {len(items)} items, the limit is {MAX_LIST_ITEMS}")
            for i, item in enumerate(items):
                if len(item) > MAX_LIST_ITEM_CHARS:
                    raise InvalidArgument(f"{name}[{i}] is {len(item)} characters, the limit is {MAX_LIST_ITEM_CHARS}")
        copy = types_pb2.Value()
        copy.CopyFrom(value)
        out[key] = copy
    return out


@dataclass(frozen=True)
class Update:
    """A validated change of fields and metadata: `fields` and `metadata` to set, `unset` keys to remove,
    and with `replace` every existing key removed first."""

    fields: Fields = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    replace: bool = False

    def apply(self, fields: Mapping[str, types_pb2.Value], metadata: Mapping[str, str],
              where: str) -> tuple[Fields, dict[str, str]]:
        """An image's fields and metadata after this change (a key lives in one of the two maps: setting it
        in one removes it from the other). Raises InvalidArgument, naming `where`, beyond MAX_FIELDS."""
        new_fields: Fields = {} if self.replace else dict(fields)
        new_metadata: dict[str, str] = {} if self.replace else dict(metadata)
        for key in self.unset:
            new_fields.pop(key, None)
            new_metadata.pop(key, None)
        for key, value in self.fields.items():
            new_metadata.pop(key, None)
            new_fields[key] = value
        for key, text in self.metadata.items():
            new_fields.pop(key, None)
            new_metadata[key] = text
        total = len(new_fields) + len(new_metadata)
        if total > MAX_FIELDS:
            raise InvalidArgument(f"{where} would have {len(new_fields)} fields and {len(new_metadata)} metadata "
                                  f"entries after the update; the limit is {MAX_FIELDS} together: unset some keys")
        return new_fields, new_metadata


def merged(fields: Mapping[str, types_pb2.Value], metadata: Mapping[str, str]) -> Fields:
    """Typed fields plus every metadata entry as a string field (typed fields win on a shared key)."""
    out: Fields = {key: types_pb2.Value(string_value=value) for key, value in metadata.items()}
    out.update(fields)
    return out


def rows(fields: Mapping[str, types_pb2.Value]) -> list[tuple[str, int, object]]:
    """(key, type code, SQL value) per field, one per item of a string list."""
    out: list[tuple[str, int, object]] = []
    for key, value in fields.items():
        kind = value.WhichOneof("kind")
        code = _TYPE_OF_KIND[kind]
        if kind == "string_list":
            out.extend((key, code, item) for item in dict.fromkeys(value.string_list.values))
        elif kind == "bool_value":
            out.append((key, code, int(value.bool_value)))
        else:
            out.append((key, code, getattr(value, kind)))
    return out


def to_json(fields: Mapping[str, types_pb2.Value]) -> str:
    """The stored JSON form (FIELDS_FORMAT) of typed fields."""
    return json.dumps({key: _encoded(value) for key, value in sorted(fields.items())}, separators=(",", ":"))


def from_json(text: str | None) -> Fields:
    """Typed fields from their stored JSON form (FIELDS_FORMAT); empty text is no fields."""
    if not text:
        return {}
    return {key: _decoded(key, item) for key, item in json.loads(text).items()}


def _encoded(value: types_pb2.Value) -> dict[str, object]:
    kind = value.WhichOneof("kind")
    if kind is None:
        return {}
    if kind in ("int_value", "time_ms"):
        return {kind: str(getattr(value, kind))}
    if kind == "string_list":
        items = list(value.string_list.values)
        return {kind: {"values": items} if items else {}}
    if kind in ("string_value", "float_value", "bool_value"):
        return {kind: getattr(value, kind)}
    raise ValueError(f"typed field kind {kind!r} has no stored form (fields format {FIELDS_FORMAT}): add one here")


def _decoded(key: str, item: dict[str, object]) -> types_pb2.Value:
    if not item:
        return types_pb2.Value()
    if len(item) != 1:
        raise ValueError(f"stored field {key!r} has {len(item)} kinds: {sorted(item)}")
    ((kind, raw),) = item.items()
    if kind in ("int_value", "time_ms"):
        return types_pb2.Value(**{kind: int(raw)})  # type: ignore[arg-type,call-overload]
    if kind == "string_value" and isinstance(raw, str):
        return types_pb2.Value(string_value=raw)
    if kind == "float_value" and isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        return types_pb2.Value(float_value=float(raw))
    if kind == "bool_value" and isinstance(raw, bool):
        return types_pb2.Value(bool_value=raw)
    if kind == "string_list" and isinstance(raw, dict):
        return types_pb2.Value(string_list=types_pb2.StringList(values=list(raw.get("values", []))))
    raise ValueError(f"stored field {key!r} is not in fields format {FIELDS_FORMAT}: {item!r}")
