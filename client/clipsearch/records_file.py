"""Export and import of records: a collection's records as a file of JSON lines, and back into a server.

`export_records(client, out)` scrolls the records (RecordService.ScrollRecords) and writes them;
`import_records(client, lines)` checks a file and writes its records with IndexService.UpsertVectors.
`clipsearch export FILE` and `clipsearch import FILE` are these two functions. An export with vectors
(and thumbnails) is a backup: importing it into an empty server of the same model gives back the same
records and the same search results, with no image and no encoder worker. It also moves a collection
between deployments.

The file format, version 1
--------------------------
JSON lines: UTF-8, one JSON object per line, each line ending in "\\n" (blank lines are skipped).

Line 1, the header:

    {"format": "clipsearch-records", "version": 1, "model": {"name": "ViT-B-32@laion2b_s34b_b79k", "dim": 512},
     "where": "shape=circle" or null, "vectors": true, "thumbnails": true, "exported_at_ms": 1718000000000}

`model` is the collection's model (GetIndexStats); `where` the filter the export was made with (the
`--where` text, several joined by " AND "; null for every record); `vectors` and `thumbnails` say what
the record lines hold; `exported_at_ms` when the export began (ms since the Unix epoch).

Every other line is one record: the proto3 JSON mapping of clipsearch.v1.Record with the proto field
names, so any language's protobuf JSON parser reads it (`json_format.ParseDict(line, Record())` in
Python). Empty values are left out, and so is `model` (it is in the header):

    {"id": "img-001", "uri": "/photos/a.jpg", "metadata": {"album": "pets"},
     "fields": {"n": {"int_value": "3"}, "score": {"float_value": 0.5}, "ok": {"bool_value": true},
                "taken": {"time_ms": "1704067200000"}, "tags": {"string_list": {"values": ["a", "b"]}},
                "shape": {"string_value": "circle"}},
     "updated_at_ms": "1718000000000", "vector": "<base64>",
     "thumbnail": {"data": "<base64>", "mime_type": "image/webp"}}

- `fields`: each Value in its JSON form, exactly one kind: int64 values (int_value, time_ms) as strings,
  float_value a number ("NaN", "Infinity" and "-Infinity" as strings).
- `vector` (only with vectors): standard base64 of the stored unit vector, model.dim little-endian float32
  values (4 * dim bytes).
- `thumbnail` (only with thumbnails, for images that have one): base64 data and its MIME type.
- `updated_at_ms`, `submitted_at_ms`: when the exporting server's store last wrote the record, and when
  the image was submitted for encoding (left out when unknown). Neither is restored by an import: the
  importing store writes its own time, and submitted_at_ms 0.
The records come in ascending id order (of their ids' UTF-8 bytes).

An export reads the records as a scroll, not a snapshot: with writes going on, each record is written as
it was when its page was read (see RecordService.ScrollRecords).

Import rules
------------
1. The header comes first: a file without one, of another format or of a version other than 1 is refused
   (line 1), and so is a file whose model (name and dim) is not the server's, naming both models.
   Vectors cannot be made again from a record, so a file exported without vectors cannot be imported.
2. Then, by default, every line is checked before anything is written: valid JSON, an object, an `id`
   (a non-empty string), a `vector` of exactly 4 * dim bytes after base64 decoding, `fields` in the Value
   JSON form, `metadata` strings, a `thumbnail` with base64 data; proto3 JSON's lowerCamelCase names
   (`updatedAtMs`, `intValue`, ...) are accepted too. The first bad line refuses the whole import with
   its line number, a truncated last line included; nothing is written. (A file that cannot seek, such
   as standard input, is kept in a temporary file meanwhile: TMPDIR needs room for it.) With
   `check_first=False` each line is checked as it is sent instead: a bad line stops the import once
   the batches before it are written.
3. The records are written with UpsertVectors, the model from the header, submitted_at_ms 0 (so an id
   deleted earlier on the target is written all the same), with their uri, metadata, fields and thumbnail,
   in batches of at most 256 records (and about 8 MiB), a few batches in flight. A batch refused with
   UNAVAILABLE or RESOURCE_EXHAUSTED is sent again, a bounded number of times with backoff; any other
   refusal (the server's limits on ids, fields and thumbnails are checked there) stops the import, naming
   its lines: the batches before it stay written. Writing a record again replaces it with the same
   values, so importing the same file again is safe.
4. Records already on the target with other ids stay; an id in the file replaces the target's record.
   The target normalizes each vector again when it takes it (UpsertVectors), so a stored vector may
   differ from the file's in its last float32 bit.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, Sequence, TextIO, TypeVar

import grpc
from google.protobuf import text_format

from .errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError, from_rpc_error
from .v1 import index_service_pb2 as index_pb, record_service_pb2 as record_pb, types_pb2

if TYPE_CHECKING:
    from .client import Client, _Call

T = TypeVar("T")

__all__ = ["FORMAT", "VERSION", "ImportResult", "RecordsFileError", "export_records", "header_line", "import_records",
           "record_line"]

FORMAT = "clipsearch-records"
VERSION = 1

EXPORT_PAGE = 1000  # records per ScrollRecords page (the API's limit) ...
EXPORT_PAGE_THUMBNAILS = 100  # ... with thumbnails
BATCH_RECORDS = 256  # records per UpsertVectors call ...
BATCH_BYTES = 8 * 1024 * 1024  # ... and about this many bytes of vectors and thumbnails at most
IN_FLIGHT = 4  # UpsertVectors calls at once
RETRIES = 6  # attempts of a batch refused with UNAVAILABLE or RESOURCE_EXHAUSTED


class RecordsFileError(ValueError):
    """A records file that cannot be imported: `line` (1-based) and why (`reason`)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class ImportResult:
    """What an import did: records written (`imported`), UpsertVectors calls (`batches`), in `seconds`."""

    imported: int
    batches: int
    seconds: float


# --- writing -----------------------------------------------------------------------------------------

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _float_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _value_json(value: types_pb2.Value) -> dict[str, Any]:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return {kind: value.string_value}
    if kind == "int_value" or kind == "time_ms":
        return {kind: str(getattr(value, kind))}
    if kind == "float_value":
        return {kind: _float_json(value.float_value)}
    if kind == "bool_value":
        return {kind: value.bool_value}
    if kind == "string_list":
        return {kind: {"values": list(value.string_list.values)}}
    return {}


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def record_line(r: record_pb.Record) -> str:
    """One record as a line of the file (with its "\\n"): the proto3 JSON of `r` without `model` and
    without empty values, map keys sorted."""
    obj: dict[str, Any] = {"id": r.id}
    if r.uri:
        obj["uri"] = r.uri
    if r.metadata:
        obj["metadata"] = dict(sorted(r.metadata.items()))
    if r.fields:
        obj["fields"] = {key: _value_json(r.fields[key]) for key in sorted(r.fields)}
    if r.submitted_at_ms:
        obj["submitted_at_ms"] = str(r.submitted_at_ms)
    if r.updated_at_ms:
        obj["updated_at_ms"] = str(r.updated_at_ms)
    # Base64 needs no JSON escaping: the long strings are spliced in as they are (JSON-encoding them
    # would cost more than everything else together).
    line = _DUMP(obj)[:-1]
    if r.vector:
        line += ',"vector":"' + _b64(r.vector) + '"'
    if r.HasField("thumbnail") and (r.thumbnail.data or r.thumbnail.mime_type):
        parts = []
        if r.thumbnail.data:
            parts.append('"data":"' + _b64(r.thumbnail.data) + '"')
        if r.thumbnail.mime_type:
            parts.append('"mime_type":' + _DUMP(r.thumbnail.mime_type))
        line += ',"thumbnail":{' + ",".join(parts) + "}"
    return line + "}\n"


def header_line(model: str, dim: int, where: str | None, vectors: bool, thumbnails: bool,
                exported_at_ms: int) -> str:
    """The header (line 1), with its "\\n"."""
    return _DUMP({"format": FORMAT, "version": VERSION, "model": {"name": model, "dim": dim}, "where": where,
                  "vectors": vectors, "thumbnails": thumbnails, "exported_at_ms": exported_at_ms}) + "\n"


def _where(where: types_pb2.Filter | str | Sequence[str] | None) -> tuple[types_pb2.Filter | None, str | None]:
    """The filter and its text for the header: --where expressions (clipsearch.where), or a Filter."""
    if where is None:
        return None, None
    if isinstance(where, types_pb2.Filter):
        return where, text_format.MessageToString(where, as_one_line=True)
    from .where import where_filter

    expressions = [where] if isinstance(where, str) else list(where)
    return where_filter(expressions), " AND ".join(expressions) if expressions else None


class _Started(Generic[T]):
    """A call started now: its request is on its way when this returns (gRPC's future API), so the calling
    thread can write or parse meanwhile; `result()` waits for the answer. (A thread per call would first
    have to win the GIL from the busy caller, up to 5 ms each time.)"""

    def __init__(self, client: Client, call: _Call[T]) -> None:
        self.call = call
        method = getattr(client._stubs[call.service], call.method)
        self.future = method.future(call.request, timeout=client.timeout, metadata=client.connection.metadata())

    def result(self) -> T:
        try:
            reply = self.future.result()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return self.call.parse(reply)

    def cancel(self) -> None:
        self.future.cancel()


def export_records(client: Client, out: TextIO, where: types_pb2.Filter | str | Sequence[str] | None = None,
                   vectors: bool = False, thumbnails: bool | None = None,
                   progress: Callable[[int], None] | None = None) -> int:
    """Writes the header and then every record (or every record matching `where`: a Filter, or --where
    expressions as text) to `out`, in the format above; returns the number of records written.
    `vectors`: include the vectors (needed to import the file); `thumbnails` (default: as `vectors`):
    include the thumbnails. `progress` is called with the number of records of each page written.
    The next page is asked for before the current one is written. Each page has the client's timeout."""
    from .client import _Call, _scroll_request

    thumbnails = vectors if thumbnails is None else thumbnails
    flt, where_text = _where(where)
    began_ms = int(time.time() * 1000)
    stats = client.stats()
    page_size = EXPORT_PAGE_THUMBNAILS if thumbnails else EXPORT_PAGE

    def fetch(cursor: str) -> _Started[Any]:
        request = _scroll_request(flt, cursor, page_size, vectors, thumbnails, 0)
        return _Started(client, _Call("record", "ScrollRecords", request, lambda reply: reply))

    out.write(header_line(stats.model, stats.dim, where_text, vectors, thumbnails, began_ms))
    written = 0
    pending: _Started[Any] | None = fetch("")
    try:
        while pending is not None:
            page = pending.result()
            pending = fetch(page.next_cursor) if page.next_cursor else None
            out.write("".join([record_line(r) for r in page.records]))
            written += len(page.records)
            if progress is not None:
                progress(len(page.records))
    finally:
        if pending is not None:
            pending.cancel()
    return written


# --- reading -----------------------------------------------------------------------------------------

_CAMEL = {"updatedAtMs": "updated_at_ms", "submittedAtMs": "submitted_at_ms", "mimeType": "mime_type",
          "stringValue": "string_value", "intValue": "int_value", "floatValue": "float_value",
          "boolValue": "bool_value", "timeMs": "time_ms", "stringList": "string_list"}
_RECORD_KEYS = {"id", "uri", "metadata", "fields", "submitted_at_ms", "updated_at_ms", "model", "vector", "thumbnail"}
_INT = re.compile(r"^-?\d+$")
_INT64 = (-(2**63), 2**63 - 1)
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _Bad(Exception):
    """A line's problem, before its line number is known."""


def _keys(obj: dict[str, Any]) -> dict[str, Any]:
    """proto3 JSON's lowerCamelCase names as the proto names; null values as absent (proto3 JSON's rule)."""
    return {_CAMEL.get(key, key): value for key, value in obj.items() if value is not None}


def _int64(value: Any, what: str, unsigned: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad(f"{what} must be an integer (a JSON string or number)")
    if isinstance(value, str) and not _INT.match(value):
        raise _Bad(f"{what} must be an integer, got {value!r}")
    number = int(value)
    low, high = (0, 2**64 - 1) if unsigned else _INT64
    if not low <= number <= high:
        raise _Bad(f"{what} {number} is beyond {'uint64' if unsigned else 'int64'}")
    return number


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_"  # standard and URL-safe
_TO_STANDARD = str.maketrans("-_", "+/")


def _b64_size(value: Any, what: str) -> int:
    """The number of bytes a base64 string (standard or URL-safe, padded or not) decodes to; _Bad when it
    is not one. As strict as the decoding, and about 3x faster than decoding (a check pass only needs this)."""
    if not isinstance(value, str) or not value.isascii():
        raise _Bad(f"{what} must be a base64 string")
    raw = value.encode("ascii")
    body = raw.rstrip(b"=")
    padding = len(raw) - len(body)
    if padding > 2 or (padding and len(raw) % 4) or len(body) % 4 == 1 or body.translate(None, _B64_ALPHABET):
        raise _Bad(f"{what} is not valid base64")
    return len(body) * 3 // 4


def _b64_decode(value: str) -> bytes:
    """A base64 string that _b64_size accepted, decoded."""
    if "-" in value or "_" in value:
        value = value.translate(_TO_STANDARD)
    if len(value) % 4:
        value = value.rstrip("=")
        value += "=" * (-len(value) % 4)
    return binascii.a2b_base64(value)


def _value(key: str, raw: Any) -> types_pb2.Value:
    what = f"fields[{key!r}]"
    if not isinstance(raw, dict):
        raise _Bad(f'{what} must be a Value object such as {{"int_value": "3"}}')
    raw = _keys(raw)
    if len(raw) != 1:
        raise _Bad(f"{what} must hold exactly one of string_value, int_value, float_value, bool_value, time_ms, "
                   f"string_list (got {sorted(raw) or 'none'})")
    (kind, value), = raw.items()
    if kind == "string_value":
        if not isinstance(value, str):
            raise _Bad(f"{what}.string_value must be a string")
        return types_pb2.Value(string_value=value)
    if kind == "int_value":
        return types_pb2.Value(int_value=_int64(value, f"{what}.int_value"))
    if kind == "time_ms":
        return types_pb2.Value(time_ms=_int64(value, f"{what}.time_ms"))
    if kind == "float_value":
        if isinstance(value, str) and value in _SPECIAL_FLOATS:
            return types_pb2.Value(float_value=_SPECIAL_FLOATS[value])
        if isinstance(value, str):
            try:
                return types_pb2.Value(float_value=float(value))
            except ValueError:
                raise _Bad(f"{what}.float_value must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(f"{what}.float_value must be a number")
        return types_pb2.Value(float_value=float(value))
    if kind == "bool_value":
        if not isinstance(value, bool):
            raise _Bad(f"{what}.bool_value must be true or false")
        return types_pb2.Value(bool_value=value)
    if kind == "string_list":
        if not isinstance(value, dict) or set(value) - {"values"}:
            raise _Bad(f'{what}.string_list must be an object {{"values": [...]}}')
        values = value.get("values")
        values = [] if values is None else values
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _Bad(f"{what}.string_list.values must be a list of strings")
        return types_pb2.Value(string_list=types_pb2.StringList(values=values))
    raise _Bad(f"{what}: unknown kind {kind!r} (string_value, int_value, float_value, bool_value, time_ms or "
               "string_list)")


_THUMBNAIL_FORM = 'thumbnail must be an object {"data": base64, "mime_type": "image/..."}'
_VECTOR_MEMBER = ',"vector":"'
_THUMBNAIL_MEMBER = ',"thumbnail":{"data":"'


def _loads(text: str | bytes) -> Any:
    """json.loads(text), twice as fast for a line as record_line writes it: the long base64 strings at its
    end (the vector, the thumbnail's data) are cut out before parsing and put back after. They hold no
    quote or backslash, and what remains must parse as a whole object, so the result is json.loads's
    (or its ValueError: any other layout, or any doubt, falls back to json.loads)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError, as from json.loads
    i = text.rfind(_VECTOR_MEMBER)
    if i < 0:
        return json.loads(text)
    try:
        j = text.index('"', i + len(_VECTOR_MEMBER))
        vector = text[i + len(_VECTOR_MEMBER):j]
        tail = text[j + 1:].rstrip()
        thumbnail: Any = None
        if tail != "}":
            if not tail.startswith(_THUMBNAIL_MEMBER) or not tail.endswith("}}"):
                return json.loads(text)
            k = tail.index('"', len(_THUMBNAIL_MEMBER))
            data = tail[len(_THUMBNAIL_MEMBER):k]
            thumbnail = json.loads('{"data":""' + tail[k + 1:-1])
            if "\\" in data or not isinstance(thumbnail, dict) or set(thumbnail) - {"data", "mime_type"}:
                return json.loads(text)
            thumbnail["data"] = data
        obj = json.loads(text[:i] + "}")
        if "\\" in vector or not isinstance(obj, dict) or not obj or "vector" in obj or "thumbnail" in obj:
            return json.loads(text)
    except ValueError:
        return json.loads(text)
    obj["vector"] = vector
    if thumbnail is not None:
        obj["thumbnail"] = thumbnail
    return obj


def _vector_record(text: str | bytes, model: types_pb2.ModelInfo, build: bool = True,
                   checked: bool = False) -> index_pb.VectorRecord | None:
    """The VectorRecord of one record line (None when not `build`: the check pass, which checks exactly as
    much and decodes no base64); _Bad when the line is not a valid record with a vector. `checked`: the
    line passed the check pass already (its base64 is not checked again)."""
    if checked:  # the check pass has seen this very line: build it without checking again
        return _build(_loads(text))
    truncated = "" if _ends_line(text) else "; the line is truncated (no line end)"
    try:
        obj = _loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"not valid JSON (column {exc.colno}: {exc.msg}){truncated}") from None
    except ValueError:  # UnicodeDecodeError
        raise _Bad(f"not valid UTF-8{truncated}") from None
    if not isinstance(obj, dict):
        raise _Bad("not a JSON object")
    obj = _keys(obj)
    unknown = set(obj) - _RECORD_KEYS
    if unknown:
        raise _Bad(f"unknown key(s) {sorted(unknown)} (a Record has {sorted(_RECORD_KEYS)})")
    image_id = obj.get("id")
    if not isinstance(image_id, str) or not image_id:
        raise _Bad('no "id" (a non-empty string)')
    where = f"record {image_id!r}"
    if "vector" not in obj:
        raise _Bad(f"{where} has no vector: the file was exported without --vectors, and only records with their "
                   "vectors can be imported")
    size = (len(obj["vector"].rstrip("=")) * 3 // 4 if checked and isinstance(obj["vector"], str)
            else _b64_size(obj["vector"], f"{where}: vector"))
    if size != 4 * model.dim:
        raise _Bad(f"{where}: the vector is {size} bytes, the model's dim {model.dim} needs {4 * model.dim}")
    uri = obj.get("uri", "")
    if not isinstance(uri, str):
        raise _Bad(f"{where}: uri must be a string")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _Bad(f"{where}: metadata must be an object of strings")
    fields = obj.get("fields", {})
    if not isinstance(fields, dict):
        raise _Bad(f"{where}: fields must be an object of Values")
    try:
        values = {key: _value(key, raw) for key, raw in fields.items()}
    except _Bad as exc:
        raise _Bad(f"{where}: {exc}") from None
    for key in ("updated_at_ms", "submitted_at_ms"):  # checked, not restored
        if key in obj:
            _int64(obj[key], f"{where}: {key}", unsigned=key == "submitted_at_ms")
    if "model" in obj:
        m = obj["model"]
        if not isinstance(m, dict) or (m.get("name"), m.get("dim")) != (model.name, model.dim):
            raise _Bad(f"{where}: its model {m!r} is not the header's ({model.name!r}, dim {model.dim})")
    thumbnail = obj.get("thumbnail")
    if thumbnail is not None:
        if not isinstance(thumbnail, dict):
            raise _Bad(f"{where}: {_THUMBNAIL_FORM}")
        thumbnail = _keys(thumbnail)
        data, mime = thumbnail.get("data", ""), thumbnail.get("mime_type", "")
        if set(thumbnail) - {"data", "mime_type"} or not isinstance(mime, str):
            raise _Bad(f"{where}: {_THUMBNAIL_FORM}")
        if not checked:
            _b64_size(data, f"{where}: thumbnail.data")
    if not build:
        return None
    return index_pb.VectorRecord(
        id=image_id, vector=_b64_decode(obj["vector"]), uri=uri, metadata=metadata, fields=values,
        thumbnail=None if thumbnail is None else types_pb2.Thumbnail(data=_b64_decode(data), mime_type=mime))


def _build(obj: dict[str, Any]) -> index_pb.VectorRecord:
    """The VectorRecord of a line that passed the check pass (the same checks would only repeat)."""
    values = {}
    for key, raw in (obj.get("fields") or {}).items():
        (kind, value), = _keys(raw).items()
        if kind == "int_value" or kind == "time_ms":
            value = int(value)
        elif kind == "float_value":
            value = float(value)  # also "NaN", "Infinity", "-Infinity"
        elif kind == "string_list":
            value = types_pb2.StringList(values=value.get("values") or ())
        values[key] = types_pb2.Value(**{kind: value})
    thumbnail = obj.get("thumbnail")
    if thumbnail is not None:
        thumbnail = _keys(thumbnail)
        thumbnail = types_pb2.Thumbnail(data=_b64_decode(thumbnail.get("data", "")),
                                        mime_type=thumbnail.get("mime_type", ""))
    return index_pb.VectorRecord(id=obj["id"], vector=_b64_decode(obj["vector"]), uri=obj.get("uri") or "",
                                 metadata=obj.get("metadata"), fields=values, thumbnail=thumbnail)


def _ends_line(text: str | bytes) -> bool:
    return text.endswith(b"\n") if isinstance(text, bytes) else text.endswith("\n")


def _blank(text: str | bytes) -> bool:
    return not text or text.isspace()  # isspace stops at the first other character (strip would copy the line)


def _header(first: str | bytes | None) -> tuple[types_pb2.ModelInfo, dict[str, Any]]:
    expected = f'the header {{"format": "{FORMAT}", "version": {VERSION}, "model": ...}}'
    if first is None:
        raise RecordsFileError(1, f"the file is empty: no header (a records file begins with {expected})")
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordsFileError(1, f"not a clipsearch records file: the first line must be {expected}")
    if header.get("version") != VERSION:
        raise RecordsFileError(1, f"version {header.get('version')!r} of the {FORMAT} format is not supported "
                                  f"(this client reads version {VERSION})")
    m = header.get("model")
    if (not isinstance(m, dict) or not isinstance(m.get("name"), str) or isinstance(m.get("dim"), bool)
            or not isinstance(m.get("dim"), int) or m["dim"] <= 0):
        raise RecordsFileError(1, 'the header\'s "model" must be {"name": "...", "dim": N}')
    if header.get("vectors") is False:
        raise RecordsFileError(1, "the file was exported without --vectors: its records have no vectors, and an "
                                  "import needs them (export again with --vectors)")
    return types_pb2.ModelInfo(name=m["name"], dim=m["dim"]), header


def _check_model(model: types_pb2.ModelInfo, client: Client) -> None:
    stats = client.stats()
    if (model.name, model.dim) != (stats.model, stats.dim):
        raise RecordsFileError(1, f"the file's model is {model.name!r} (dim {model.dim}) but the server's is "
                                  f"{stats.model!r} (dim {stats.dim}): records import only into a collection of the "
                                  "same model")


def _numbered(lines: Iterable[str | bytes], start: int) -> Iterator[tuple[int, str | bytes]]:
    for number, text in enumerate(lines, start):
        if not _blank(text):
            yield number, text


def _records(lines: Iterable[str | bytes], start: int, model: types_pb2.ModelInfo,
             checked: bool = False) -> Iterator[tuple[int, index_pb.VectorRecord]]:
    """The records of the lines (numbered from `start`); RecordsFileError at the first bad line.
    `checked`: the lines passed the check pass already."""
    for number, text in _numbered(lines, start):
        try:
            record = _vector_record(text, model, checked=checked)
        except _Bad as exc:
            raise RecordsFileError(number, str(exc)) from None
        assert record is not None
        yield number, record


def _check_lines(lines: Iterable[str | bytes], start: int, model: types_pb2.ModelInfo) -> int:
    """The number of records of the lines; RecordsFileError at the first bad line (the check pass)."""
    count = 0
    for number, text in _numbered(lines, start):
        try:
            _vector_record(text, model, build=False)
        except _Bad as exc:
            raise RecordsFileError(number, str(exc)) from None
        count += 1
    return count


@dataclass
class _Batch:
    records: list[index_pb.VectorRecord]
    first: int  # its line numbers
    last: int
    call: _Started[int] | None = None
    attempts: int = 0

    def start(self, client: Client, model: types_pb2.ModelInfo) -> None:
        from .client import _Call

        request = index_pb.UpsertVectorsRequest(model=model, records=self.records)
        self.attempts += 1
        self.call = _Started(client, _Call("index", "UpsertVectors", request, lambda reply: int(reply.upserted)))

    def result(self, client: Client, model: types_pb2.ModelInfo) -> int:
        """Records written; the batch is sent again on UNAVAILABLE or RESOURCE_EXHAUSTED (RETRIES attempts)."""
        while True:
            assert self.call is not None
            try:
                return self.call.result()
            except (UnavailableError, ResourceExhaustedError):
                if self.attempts >= RETRIES:
                    raise
                time.sleep(min(0.25 * 2 ** (self.attempts - 1), 4.0))
                self.start(client, model)
            except InvalidArgumentError as exc:  # a record the server refuses: say where it is in the file
                raise InvalidArgumentError(exc.code, f"lines {self.first}-{self.last}: {exc.details}") from exc


def _spool(out: IO[bytes], text: str | bytes) -> None:
    """Keeps a line for the second pass, with its line end (lines given without one stay lines)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    out.write(data if data.endswith(b"\n") else data + b"\n")


def import_records(client: Client, lines: Iterable[str] | Iterable[bytes] | IO[str] | IO[bytes], *,
                   check_first: bool = True, progress: Callable[[int], None] | None = None,
                   total: Callable[[int], None] | None = None, batch_records: int = BATCH_RECORDS,
                   in_flight: int = IN_FLIGHT) -> ImportResult:
    """Writes the records of a records file (an open file, text or binary, or any iterable of its lines)
    to the server of `client`, following the import rules above. RecordsFileError (naming the line) for a
    file that cannot be imported; a ClipsearchError for a server's refusal. `total` is called once with
    the number of records when they have all been checked, `progress` with the number of each batch
    written."""
    began = time.monotonic()
    source: Iterable[str | bytes] = lines  # type: ignore[assignment]
    rewind: Callable[[], Iterable[str | bytes]] | None = None
    spool: IO[bytes] | None = None
    seekable = hasattr(lines, "seekable") and hasattr(lines, "tell") and lines.seekable()  # type: ignore[union-attr]
    if check_first and seekable:
        stream: IO[Any] = lines  # type: ignore[assignment]
        start = stream.tell()

        def rewind_file() -> Iterable[str | bytes]:
            stream.seek(start)
            return stream

        rewind = rewind_file
    elif check_first:
        spool = tempfile.TemporaryFile(prefix="clipsearch-import-")
    try:
        iterator = iter(source)
        first = next(iterator, None)
        model, _ = _header(first)
        _check_model(model, client)
        if check_first:
            rest: Iterable[str | bytes] = iterator
            if spool is not None:
                assert first is not None
                _spool(spool, first)

                def kept(it: Iterator[str | bytes], out: IO[bytes]) -> Iterator[str | bytes]:
                    for text in it:
                        _spool(out, text)
                        yield text

                rest = kept(iterator, spool)
            count = _check_lines(rest, 2, model)
            if total is not None:
                total(count)
            if spool is not None:
                spool.seek(0)
                iterator = iter(spool)
            else:
                assert rewind is not None
                iterator = iter(rewind())
            next(iterator, None)  # the header
        records = _records(iterator, 2, model, checked=check_first)
        return _upload(client, model, records, progress, batch_records, in_flight, began)
    finally:
        if spool is not None:
            spool.close()


def _upload(client: Client, model: types_pb2.ModelInfo, records: Iterator[tuple[int, index_pb.VectorRecord]],
            progress: Callable[[int], None] | None, batch_records: int, in_flight: int, began: float) -> ImportResult:
    imported = batches = 0
    running: deque[_Batch] = deque()

    def settle() -> None:
        nonlocal imported
        done = running.popleft()
        imported += done.result(client, model)
        if progress is not None:
            progress(len(done.records))

    def send(batch: _Batch) -> None:
        nonlocal batches
        if len(running) >= max(1, in_flight):
            settle()
        batch.start(client, model)
        running.append(batch)
        batches += 1

    try:
        batch = _Batch([], 0, 0)
        size = 0
        try:
            for number, record in records:
                if not batch.records:
                    batch.first = number
                batch.records.append(record)
                batch.last = number
                size += len(record.vector) + len(record.thumbnail.data)
                if len(batch.records) >= batch_records or size >= BATCH_BYTES:
                    send(batch)
                    batch, size = _Batch([], 0, 0), 0
        except RecordsFileError:  # a bad line (without the check pass): the batches sent before it are written
            while running:
                settle()
            raise
        if batch.records:
            send(batch)
        while running:
            settle()
    finally:
        for left in running:
            if left.call is not None:
                left.call.cancel()
    return ImportResult(imported, batches, time.monotonic() - began)
