"""The records file format (clipsearch.records_file), without a server: every line written is the proto3
JSON of clipsearch.v1.Record (json_format.ParseDict reads it back to the same record), the reader gives
back the same record as an UpsertVectors VectorRecord, and the reader refuses bad lines naming them.
The import and export themselves run against real servers in tests/test_records_cli.py."""

from __future__ import annotations

import base64
import io
import json
import math
import random
import struct
import time
from typing import Callable

import pytest
from google.protobuf import json_format

from clipsearch.records_file import (
    FORMAT,
    RecordsFileError,
    _header,
    _loads,
    _records,
    _vector_record,
    header_line,
    record_line,
)
from clipsearch.v1 import record_service_pb2 as record_pb, types_pb2

DIM = 8
MODEL = types_pb2.ModelInfo(name="tiny@test", dim=DIM)


def vector(seed: int, dim: int = DIM) -> bytes:
    rng = random.Random(seed)
    return struct.pack(f"<{dim}f", *(rng.uniform(-1, 1) for _ in range(dim)))


def every_kind() -> record_pb.Record:
    """A record with every kind of Value, edge values, non-ASCII text and a thumbnail."""
    return record_pb.Record(
        id="img-ü/1 \"quoted\"", uri="/photos/été\n.jpg", metadata={"album": "pets", "empty": "", "ключ": "знач"},
        fields={
            "s": types_pb2.Value(string_value="a \u2028 line\tbreak \U0001f600"),
            "empty_s": types_pb2.Value(string_value=""),
            "n": types_pb2.Value(int_value=-(2**63)),
            "big": types_pb2.Value(int_value=2**63 - 1),
            "zero": types_pb2.Value(int_value=0),
            "x": types_pb2.Value(float_value=0.1),
            "whole": types_pb2.Value(float_value=3.0),
            "tiny": types_pb2.Value(float_value=5e-324),
            "huge": types_pb2.Value(float_value=-1.7976931348623157e308),
            "nan": types_pb2.Value(float_value=math.nan),
            "inf": types_pb2.Value(float_value=math.inf),
            "t": types_pb2.Value(bool_value=True),
            "f": types_pb2.Value(bool_value=False),
            "when": types_pb2.Value(time_ms=-62135596800000),
            "tags": types_pb2.Value(string_list=types_pb2.StringList(values=["a", "", "ü"])),
            "no_tags": types_pb2.Value(string_list=types_pb2.StringList()),
        },
        updated_at_ms=1718000000123, vector=vector(1),
        thumbnail=types_pb2.Thumbnail(data=bytes(range(256)) * 3, mime_type="image/webp"))


def parsed(line: str) -> record_pb.Record:
    assert line.endswith("\n") and line.count("\n") == 1  # one line, whatever the strings hold
    return json_format.ParseDict(json.loads(line), record_pb.Record())


def same(a: record_pb.Record, b: record_pb.Record) -> bool:
    """Equal, NaN floats included (NaN != NaN in protobuf's comparison)."""
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_a_record_line_is_the_proto3_json_of_the_record() -> None:
    record = every_kind()
    line = record_line(record)
    assert same(parsed(line), record)
    obj = json.loads(line)
    assert list(obj) == ["id", "uri", "metadata", "fields", "updated_at_ms", "vector", "thumbnail"]
    assert obj["fields"]["n"] == {"int_value": str(-(2**63))}
    assert obj["fields"]["when"] == {"time_ms": "-62135596800000"}
    assert obj["fields"]["x"] == {"float_value": 0.1} and obj["fields"]["nan"] == {"float_value": "NaN"}
    assert obj["fields"]["inf"] == {"float_value": "Infinity"} and obj["fields"]["f"] == {"bool_value": False}
    assert obj["fields"]["tags"] == {"string_list": {"values": ["a", "", "ü"]}}
    assert obj["updated_at_ms"] == "1718000000123" and "model" not in obj
    assert base64.b64decode(obj["vector"], validate=True) == record.vector
    assert obj["thumbnail"] == {"data": base64.b64encode(record.thumbnail.data).decode(), "mime_type": "image/webp"}
    assert "ü" in line and "\\u00fc" not in line  # UTF-8, not escaped
    # what protobuf's own printer writes, up to formatting (floats it writes as numbers; an empty list as {})
    ours = obj["fields"]
    theirs = json_format.MessageToDict(record, preserving_proto_field_name=True)["fields"]
    for key in ("s", "n", "big", "x", "whole", "t", "f", "when", "tags", "empty_s", "zero", "nan", "inf"):
        assert ours[key] == theirs[key], key


def test_empty_values_and_the_model_are_left_out() -> None:
    record = record_pb.Record(id="bare", model=MODEL)
    assert json.loads(record_line(record)) == {"id": "bare"}
    without_model = record_pb.Record(id="bare")
    assert same(parsed(record_line(record)), without_model)
    thumb_less = record_pb.Record(id="t", thumbnail=types_pb2.Thumbnail())  # set but empty: no thumbnail
    assert json.loads(record_line(thumb_less)) == {"id": "t"}


def test_random_records_round_trip_through_protobufs_parser_and_ours() -> None:
    rng = random.Random(27)
    alphabet = "abcxyz é中\"\\/\n\t\x00\x7f\u2028😀"
    text = lambda n: "".join(rng.choice(alphabet) for _ in range(rng.randrange(n)))  # noqa: E731
    for i in range(300):
        fields: dict[str, types_pb2.Value] = {}
        for j in range(rng.randrange(6)):
            kind = rng.choice(["string_value", "int_value", "float_value", "bool_value", "time_ms", "string_list"])
            value = {"string_value": lambda: text(20), "int_value": lambda: rng.randrange(-(2**63), 2**63),
                     "float_value": lambda: rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 1e-300, -0.0, 1e300]),
                     "bool_value": lambda: rng.random() < 0.5, "time_ms": lambda: rng.randrange(-(2**40), 2**42),
                     "string_list": lambda: types_pb2.StringList(values=[text(5) for _ in range(rng.randrange(4))]),
                     }[kind]()
            fields[f"k{j}{text(4)}"] = types_pb2.Value(**{kind: value})
        record = record_pb.Record(
            id=f"id-{i}-{text(10)}", uri=text(30), metadata={text(6) or "m": text(10) for _ in range(rng.randrange(3))},
            fields=fields, updated_at_ms=rng.randrange(0, 2**45), submitted_at_ms=rng.choice([0, 2**64 - 1, 17]),
            vector=vector(i),
            thumbnail=types_pb2.Thumbnail(data=rng.randbytes(rng.randrange(1, 50)), mime_type="image/png")
            if rng.random() < 0.5 else None)
        line = record_line(record)
        assert same(parsed(line), record), line
        back = _vector_record(line, MODEL)  # what an import sends
        assert _vector_record(line, MODEL, checked=True) == back  # the send pass after the check pass
        assert (back.id, back.uri, dict(back.metadata), back.vector) == (record.id, record.uri, dict(record.metadata),
                                                                         record.vector)
        assert {k: v.SerializeToString() for k, v in back.fields.items()} == \
               {k: v.SerializeToString() for k, v in record.fields.items()}
        assert back.thumbnail == record.thumbnail and back.submitted_at_ms == 0


def test_the_header() -> None:
    line = header_line("tiny@test", DIM, "shape=circle AND n>=3", True, False, 1718000000000)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"format": FORMAT, "version": 1, "model": {"name": "tiny@test", "dim": DIM},
                                "where": "shape=circle AND n>=3", "vectors": True, "thumbnails": False,
                                "exported_at_ms": 1718000000000}
    model, _ = _header(line)
    assert model == MODEL
    assert json.loads(header_line("m", 4, None, True, True, 0))["where"] is None


@pytest.mark.parametrize("first, message", [
    (None, "the file is empty"),
    ("", "not a clipsearch records file"),
    ('{"id": "img-001", "vector": "AAAA"}\n', "not a clipsearch records file"),
    ("not json\n", "not a clipsearch records file"),
    ('{"format": "clipsearch-records", "version": 2, "model": {"name": "m", "dim": 8}, "vectors": true}\n',
     "version 2"),
    ('{"format": "clipsearch-records", "version": 1, "model": {"name": "m"}, "vectors": true}\n', '"model"'),
    ('{"format": "clipsearch-records", "version": 1, "model": {"name": "m", "dim": 8}, "vectors": false}\n',
     "exported without --vectors"),
])
def test_bad_headers_are_refused_as_line_1(first: str | None, message: str) -> None:
    with pytest.raises(RecordsFileError) as info:
        _header(first)
    assert info.value.line == 1 and message in str(info.value) and str(info.value).startswith("line 1: ")


def good(i: int) -> str:
    return record_line(record_pb.Record(id=f"img-{i}", vector=vector(i),
                                        fields={"n": types_pb2.Value(int_value=i)}))


B64_8 = base64.b64encode(b"x" * 8).decode()
BAD_LINES = [
    ('{"id": "a", "vector": "' + base64.b64encode(vector(0)).decode() + '"', "not valid JSON"),  # truncated
    ("[1, 2]\n", "not a JSON object"),
    ('{"uri": "x"}\n', '"id"'),
    ('{"id": "", "vector": "AAAA"}\n', '"id"'),
    ('{"id": "a", "uri": "u"}\n', "exported without --vectors"),
    ('{"id": "a", "vector": "' + B64_8 + '"}\n', "the vector is 8 bytes, the model's dim 8 needs 32"),
    ('{"id": "a", "vector": "@@@"}\n', "not valid base64"),
    ('{"id": "a", "vector": "' + base64.b64encode(vector(0)).decode() + '", "fields": {"n": 3}}\n',
     "fields['n'] must be a Value object"),
    ('{"id": "a", "vector": "' + base64.b64encode(vector(0)).decode() + '", "fields": {"n": {"int_value": "x"}}}\n',
     "must be an integer"),
    ('{"id": "a", "vector": "' + base64.b64encode(vector(0)).decode()
     + '", "fields": {"n": {"int_value": "1", "bool_value": true}}}\n', "exactly one of"),
    ('{"id": "a", "vector": "' + base64.b64encode(vector(0)).decode() + '", "fields": {"n": {"color": "red"}}}\n',
     "unknown kind"),
    ('{"id": "a", "vector": "' + base64.b64encode(vector(0)).decode() + '", "metadata": {"k": 1}}\n',
     "metadata must be an object of strings"),
    ('{"id": "a", "vector": "' + base64.b64encode(vector(0)).decode() + '", "colour": "red"}\n', "unknown key"),
]


@pytest.mark.parametrize("bad, message", BAD_LINES)
def test_a_bad_line_is_refused_naming_it(bad: str, message: str) -> None:
    lines = [good(1), good(2), bad, good(4)]
    if not bad.endswith("\n"):  # a truncated line can only be the last one
        lines = [good(1), good(2), bad]
    with pytest.raises(RecordsFileError) as info:
        list(_records(lines, 2, MODEL))
    assert info.value.line == 4, info.value
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("line 4: ")


def test_camel_case_names_and_blank_lines_are_read() -> None:
    line = json.dumps({"id": "a", "vector": base64.b64encode(vector(3)).decode(), "updatedAtMs": "5",
                       "fields": {"n": {"intValue": 7}, "tags": {"stringList": {"values": ["x"]}},
                                  "x": {"floatValue": "1.5"}},
                       "thumbnail": {"data": base64.urlsafe_b64encode(b"\xfb\xff").decode(), "mimeType": "image/png"}})
    (number, record), = list(_records(["\n", line + "\n", "  \n"], 2, MODEL))
    assert _vector_record(line, MODEL, checked=True) == record
    assert number == 3
    assert record.fields["n"].int_value == 7 and list(record.fields["tags"].string_list.values) == ["x"]
    assert record.fields["x"].float_value == 1.5
    assert (record.thumbnail.data, record.thumbnail.mime_type) == (b"\xfb\xff", "image/png")


def test_nulls_are_absent_values_as_in_proto3_json() -> None:
    line = json.dumps({"id": "a", "vector": base64.b64encode(vector(4)).decode(), "uri": None, "metadata": None,
                       "fields": {"n": {"int_value": "3", "bool_value": None}, "l": {"string_list": {"values": None}}},
                       "thumbnail": None, "updated_at_ms": None}) + "\n"
    record = _vector_record(line, MODEL)
    assert record is not None and _vector_record(line, MODEL, checked=True) == record
    assert (record.uri, dict(record.metadata), record.HasField("thumbnail")) == ("", {}, False)
    assert record.fields["n"].int_value == 3 and record.fields["l"].HasField("string_list")
    parsed = json_format.ParseDict(json.loads(line), record_pb.Record())  # protobuf's parser agrees
    assert parsed.fields == record.fields and parsed.vector == record.vector


def loads_or_error(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return ValueError


def test_the_fast_json_reader_reads_exactly_what_json_loads_reads() -> None:
    """_loads cuts the base64 strings out of a line before parsing: on written lines, on every truncation
    of one, on lines changed one character at a time and on tricky layouts it gives json.loads's answer."""
    rng = random.Random(5)
    record = every_kind()
    record.metadata["vector"] = base64.b64encode(b"decoy").decode()  # a nested "vector" member
    lines = [record_line(record), record_line(record_pb.Record(id="v", vector=vector(2))),
             record_line(record_pb.Record(id="t", vector=vector(2), thumbnail=types_pb2.Thumbnail(data=b"\x01")))]
    b64 = base64.b64encode(vector(9)).decode()
    lines += [
        '{"id":"a","vector":"' + b64 + '"}  \n',  # trailing whitespace
        '{"id":"a","vector":"' + b64 + '","vector":"' + b64[:-4] + '"}\n',  # a duplicate key: the last wins
        '{,"vector":"' + b64 + '"}\n',  # nothing before the member: invalid
        '{"id":"a","vector":"AB\\u0043D"}\n',  # an escape inside the string
        '{"id":"a","x":{"y":1,"vector":"' + b64 + '"}}\n',  # a nested member at the end
        '{"id":"a","vector":"' + b64 + '","thumbnail":{"data":"AA==","mime_type":"image/png","x":1}}\n',
        '{"id":"a","vector":"' + b64 + '","thumbnail":{"data":"AA==","mime_type":"image/png"}}}\n',
        '{"id":"a","vector":"' + b64 + '","thumbnail":{"data":"AA==","mime_type":"image/png"},"z":1}\n',
        '["x","vector":"' + b64 + '"]\n',
    ]
    for line in list(lines[:3]):
        lines += [line[:cut] for cut in range(0, len(line), 97)]  # truncated lines
        for _ in range(300):
            at = rng.randrange(len(line))
            lines.append(line[:at] + rng.choice('"\\{},:[] a=0') + line[at + 1:])
    for line in lines:
        expected = loads_or_error(line)
        try:
            got: object = _loads(line)
        except ValueError:
            got = ValueError
        assert got == expected, line
        assert _loads(line.encode()) == expected if expected is not ValueError else True


def test_writing_and_reading_are_fast() -> None:
    """A record with a 512-dim vector, three fields and a 6 KB thumbnail: writing its line, checking it
    (the check pass: no base64 decoded) and reading it back as a VectorRecord each go well beyond the
    server's UpsertVectors (about 10,000 records/s), so neither an export nor an import waits on them."""
    thumbnail = types_pb2.Thumbnail(data=random.Random(1).randbytes(6000), mime_type="image/webp")
    fields = {"n": types_pb2.Value(int_value=3), "shape": types_pb2.Value(string_value="x"),
              "tags": types_pb2.Value(string_list=types_pb2.StringList(values=["a", "b"]))}
    record = record_pb.Record(id="img-000123", uri="/photos/2024/img-000123.jpg", metadata={"album": "pets"},
                              fields=fields, updated_at_ms=1718000000000, vector=vector(5, 512), thumbnail=thumbnail)
    model = types_pb2.ModelInfo(name="m", dim=512)
    line = record_line(record)
    n = 3000

    def rate(work: Callable[[], object]) -> float:
        began = time.perf_counter()
        for _ in range(n):
            work()
        return n / (time.perf_counter() - began)

    out = io.StringIO()
    writing = rate(lambda: out.write(record_line(record)))
    checking = rate(lambda: _vector_record(line, model, build=False))
    reading = rate(lambda: _vector_record(line, model))
    print(f"lines/s: writing {writing:.0f}, checking {checking:.0f}, reading {reading:.0f}")
    assert writing > 15_000 and checking > 15_000 and reading > 10_000
