"""The stored form of typed fields is our own versioned format (storage/fields.py, FIELDS_FORMAT), not
protobuf's JSON: version 1 is byte for byte what earlier versions wrote, so their stores load unchanged."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from clipsearch.v1 import types_pb2
from clipsearch_core.errors import FailedPrecondition
from clipsearch_server.storage import fields as typed
from clipsearch_server.storage.records import ImageRecord
from clipsearch_server.storage.sqlite import SqliteStore


def _proto_json(fields: dict[str, types_pb2.Value]) -> str:
    """What earlier versions wrote: each Value's proto3 JSON (proto field names), keys sorted, no spaces."""
    return json.dumps({key: json_format.MessageToDict(value, preserving_proto_field_name=True)
                       for key, value in sorted(fields.items())}, separators=(",", ":"))


def _value(rng: random.Random) -> types_pb2.Value:
    kind = rng.choice(["string_value", "int_value", "float_value", "bool_value", "time_ms", "string_list"])
    if kind == "string_value":
        return types_pb2.Value(string_value=rng.choice(["", "a", "é☃\"\\\n", "x" * 300]))
    if kind == "int_value":
        return types_pb2.Value(int_value=rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-10**15, 10**15)]))
    if kind == "float_value":
        return types_pb2.Value(float_value=rng.choice([0.0, -0.0, 3.0, 0.1, 1e20, 5e-324, 1.7976931348623157e308,
                                                       rng.uniform(-1e9, 1e9)]))
    if kind == "bool_value":
        return types_pb2.Value(bool_value=rng.random() < 0.5)
    if kind == "time_ms":
        return types_pb2.Value(time_ms=rng.choice([0, typed.MIN_TIME_MS, typed.MAX_TIME_MS, rng.randrange(0, 2**41)]))
    return types_pb2.Value(string_list=types_pb2.StringList(values=rng.sample("abcdef", rng.randrange(0, 4))))


def test_version_1_is_what_earlier_versions_wrote() -> None:
    rng = random.Random(26)
    for _ in range(2000):
        fields = {f"k{rng.randrange(50)}é": _value(rng) for _ in range(rng.randrange(0, 8))}
        text = typed.to_json(fields)
        assert text == _proto_json(fields)
        assert typed.from_json(text) == fields
        assert {k: json_format.ParseDict(v, types_pb2.Value()) for k, v in json.loads(text).items()} == fields
    assert typed.to_json({"n": types_pb2.Value(int_value=3)}) == '{"n":{"int_value":"3"}}'
    assert typed.from_json("") == {} and typed.from_json(None) == {}
    with pytest.raises(ValueError):
        typed.from_json('{"n":{"intValue":"3","int_value":"3"}}')


def _old_store(path: Path, fields_text: str) -> None:
    """A store as an earlier version leaves it: fields written as proto JSON, no fields_format in meta."""
    store = SqliteStore(path)
    store.upsert([ImageRecord("a", np.ones(4, dtype=np.float32) / 2, fields={"n": types_pb2.Value(int_value=1)})])
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE key = 'fields_format'")
    conn.execute("UPDATE images SET fields = ?", (fields_text,))
    conn.commit()
    conn.close()


def test_a_store_written_before_the_format_was_recorded_loads(tmp_path: Path) -> None:
    fields = {"n": types_pb2.Value(int_value=7), "when": types_pb2.Value(time_ms=-5),
              "tags": types_pb2.Value(string_list=types_pb2.StringList(values=["x", "y"])),
              "none": types_pb2.Value(string_list=types_pb2.StringList()),
              "f": types_pb2.Value(float_value=2.5), "ok": types_pb2.Value(bool_value=False)}
    path = tmp_path / "images.sqlite3"
    _old_store(path, _proto_json(fields))
    store = SqliteStore(path)
    assert store.get_meta("fields_format") == typed.FIELDS_FORMAT
    (image,) = store.by_labels([store.label_of("a")]).values()
    assert image.fields == fields
    store.close()


def test_a_store_in_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images.sqlite3"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'fields_format'")
    conn.commit()
    conn.close()
    with pytest.raises(FailedPrecondition, match="format '2'"):
        SqliteStore(path)
