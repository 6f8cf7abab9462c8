"""Records from the command line and the Python client, through real processes: `clipsearch export`,
`import`, `update` and `delete --where`, and Client/AsyncClient scroll, update, delete_where,
export_records and import_records.

Three servers with one tokens file: the source (catalog records written by UpsertVectors with known
vectors, every kind of typed field, metadata and some thumbnails; the update and delete tests add records
of their own, with a `suite` of their own), an empty target for the one full import, and a scratch server
that is empty between tests. Checks: an export's header and every line (read back with protobuf's own JSON
parser) against GetRecords of the source, vectors bit for bit; standard output; --where exports exactly
the matching ids; an import into an empty server gives the same records and the same TextSearch answers;
a file that cannot be imported (another model, a bad line in the middle, a truncated last line, a vector
of the wrong length, an export without vectors) is refused naming the line, with nothing written; updates
by id and by filter with typed values, unset and replace, as `clipsearch get --json` shows them; deletes
by filter, and the guard against deleting everything; a read token exports but cannot write.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from clipsearch import (
    AsyncClient,
    Client,
    ImportResult,
    RecordPage,
    RecordsDeleted,
    RecordsFileError,
    UpdateResult,
    export_records,
    import_records,
)
from clipsearch.v1 import (
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    record_service_pb2 as record_pb,
    record_service_pb2_grpc as record_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)
from clipsearch.where import where_filter
from clipsearch_devkit.procs import Proc, Stack

pytestmark = pytest.mark.timeout(300)

READ_TOKEN = "records-cli-read-token-0b7c41"
WRITE_TOKEN = "records-cli-write-token-e25a93"
SHAPES = ["circle", "square", "triangle", "star"]
DAY_MS = 86_400_000
JAN_2024_MS = 1_704_067_200_000
# ids of the catalog: sorted by their UTF-8 bytes, "Z-upper" comes first and "cat-ü" last
CATALOG = [f"cat-{i:03d}" for i in range(40)] + ["Z-upper", "cat-ü"]


def meta(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Api:
    """Raw stubs to one server, with the write token unless told otherwise."""

    def __init__(self, address: str, token: str = WRITE_TOKEN) -> None:
        self.address, self.token = address, token
        self.channel = grpc.insecure_channel(address)
        self.index = index_grpc.IndexServiceStub(self.channel)
        self.records = record_grpc.RecordServiceStub(self.channel)
        self.search = search_grpc.SearchServiceStub(self.channel)
        self.model = self.index.GetIndexStats(index_pb.GetIndexStatsRequest(), timeout=10, metadata=meta(token)).model

    def upsert(self, records: list[index_pb.VectorRecord]) -> None:
        self.index.UpsertVectors(index_pb.UpsertVectorsRequest(model=self.model, records=records), timeout=30,
                                 metadata=meta(self.token))

    def get(self, ids: list[str], thumbnails: bool = True) -> dict[str, record_pb.Record]:
        out: dict[str, record_pb.Record] = {}
        for start in range(0, len(ids), 100):
            reply = self.records.GetRecords(record_pb.GetRecordsRequest(
                ids=ids[start:start + 100], allow_missing=True, include_vectors=True, include_thumbnails=thumbnails),
                timeout=30, metadata=meta(self.token))
            out.update((r.id, r) for r in reply.records)
        return out

    def all_ids(self) -> list[str]:
        ids, cursor = [], ""
        while True:
            reply = self.records.ScrollRecords(record_pb.ScrollRecordsRequest(page_size=1000, cursor=cursor),
                                               timeout=30, metadata=meta(self.token))
            ids += [r.id for r in reply.records]
            if not reply.next_cursor:
                return ids
            cursor = reply.next_cursor

    def count(self, flt: types_pb2.Filter | None = None) -> int:
        return self.records.CountRecords(record_pb.CountRecordsRequest(filter=flt), timeout=30,
                                         metadata=meta(self.token)).count

    def text_search(self, text: str, flt: types_pb2.Filter | None = None) -> list[tuple[str, float]]:
        reply = self.search.TextSearch(search_pb.TextSearchRequest(text=text, k=10, filter=flt), timeout=30,
                                       metadata=meta(self.token))
        return [(r.id, r.score) for r in reply.results]

    def delete_all(self) -> None:
        self.records.DeleteRecords(record_pb.DeleteRecordsRequest(all=True), timeout=30, metadata=meta(self.token))


def catalog_record(i: int, image_id: str, dim: int) -> index_pb.VectorRecord:
    vector = (np.random.default_rng(i).standard_normal(dim) * 2).astype("<f4")  # not unit length
    fields = {
        "n": types_pb2.Value(int_value=i), "ratio": types_pb2.Value(float_value=i / 8),
        "odd": types_pb2.Value(bool_value=i % 2 == 1), "taken": types_pb2.Value(time_ms=JAN_2024_MS + i * DAY_MS),
        "tags": types_pb2.Value(string_list=types_pb2.StringList(values=[f"t{i % 5}", "all"])),
        "shape": types_pb2.Value(string_value=SHAPES[i % 4]),
    }
    if i == 7:
        fields = {}  # a record without fields
    thumbnail = types_pb2.Thumbnail(data=b"\x89PNG fake %d" % i, mime_type="image/png") if i % 3 == 0 else None
    return index_pb.VectorRecord(id=image_id, vector=vector.tobytes(), uri="" if i == 5 else f"/photos/{image_id}.jpg",
                                 metadata={"color": ["red", "green", "blue"][i % 3], "suite": "catalog"},
                                 fields=fields, thumbnail=thumbnail)


@dataclass
class Servers:
    source: Api
    target: Api  # empty until the import test
    scratch: Api  # empty between tests
    catalog: dict[str, index_pb.VectorRecord]
    tmp: Path

    def cli(self, *args: str, server: Api | None = None, token: str = WRITE_TOKEN,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CLIPSEARCH_SERVER": (server or self.source).address, "CLIPSEARCH_AUTH_TOKEN": token}
        out = subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, timeout=120, env=env,
                             input=stdin)
        return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())

    def client(self, server: Api | None = None, token: str = WRITE_TOKEN) -> Client:
        return Client((server or self.source).address, timeout=30, token=token)


@pytest.fixture(scope="module")
def servers(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("records-cli")
    tokens = tmp / "tokens.txt"
    tokens.write_text(f"{READ_TOKEN} read reader\n{WRITE_TOKEN} write writer\n")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="records-cli")
    started: list[Proc] = []
    try:
        apis = []
        for name in ("source", "target", "scratch"):
            proc, address = stack.start_server(tmp / name, extra=["--tokens-file", str(tokens)])
            started.append(proc)
            apis.append(Api(address))
        source = apis[0]
        catalog = {image_id: catalog_record(i, image_id, source.model.dim) for i, image_id in enumerate(CATALOG)}
        source.upsert(list(catalog.values()))
        yield Servers(*apis, catalog, tmp)
    finally:
        for proc in reversed(started):
            proc.stop(timeout=15)


def lines_of(text: str) -> tuple[dict[str, Any], list[record_pb.Record]]:
    lines = text.split("\n")
    assert lines[-1] == "" and all(lines[:-1])  # "\n" line ends, no blank line
    header = json.loads(lines[0])
    return header, [json_format.ParseDict(json.loads(line), record_pb.Record()) for line in lines[1:-1]]


def check_like_source(s: Servers, records: list[record_pb.Record], vectors: bool, thumbnails: bool) -> None:
    """Each exported record is the source's GetRecords record (no model; vectors and thumbnails as asked)."""
    stored = s.source.get([r.id for r in records])
    for r in records:
        expected = record_pb.Record()
        expected.CopyFrom(stored[r.id])
        expected.ClearField("model")
        if not vectors:
            expected.ClearField("vector")
        if not thumbnails:
            expected.ClearField("thumbnail")
        assert r == expected, r.id
        if vectors:
            assert r.vector == stored[r.id].vector and len(r.vector) == 4 * s.source.model.dim  # bit for bit
    assert [r.id for r in records] == sorted((r.id for r in records), key=lambda i: i.encode())


def test_export_writes_the_header_and_every_record(servers: Servers) -> None:
    s = servers
    out = s.tmp / "all.jsonl"
    began = time.time() * 1000
    done = s.cli("export", str(out), "--vectors", token=READ_TOKEN)  # a read token suffices
    assert done.returncode == 0, done.stderr
    header, records = lines_of(out.read_text(encoding="utf-8"))
    assert header["format"] == "clipsearch-records" and header["version"] == 1
    assert header["model"] == {"name": s.source.model.name, "dim": s.source.model.dim}
    assert header["where"] is None and header["vectors"] is True and header["thumbnails"] is True
    assert began - 1000 <= header["exported_at_ms"] <= time.time() * 1000
    ids = s.source.all_ids()
    assert [r.id for r in records] == ids and set(CATALOG) <= set(ids)
    assert ids[0] == "Z-upper" and ids.index("cat-ü") == ids.index("cat-039") + 1  # UTF-8 byte order
    check_like_source(s, records, vectors=True, thumbnails=True)
    catalog = {r.id: r for r in records}
    assert catalog["cat-003"].thumbnail.data == b"\x89PNG fake 3" and not catalog["cat-004"].HasField("thumbnail")
    assert catalog["cat-007"].fields == {} and catalog["cat-005"].uri == ""
    assert catalog["cat-009"].fields["taken"].time_ms == JAN_2024_MS + 9 * DAY_MS
    assert f"exported {len(ids)} records to {out}" in done.stderr
    assert done.stdout == "" and not (s.tmp / "all.jsonl.partial").exists()


def test_export_to_standard_output_without_vectors_or_thumbnails(servers: Servers) -> None:
    s = servers
    plain = s.cli("export", "-", token=READ_TOKEN)
    assert plain.returncode == 0, plain.stderr
    header, records = lines_of(plain.stdout)
    assert (header["vectors"], header["thumbnails"]) == (False, False)
    assert '"vector":' not in plain.stdout and '"thumbnail":' not in plain.stdout
    assert [r.id for r in records] == s.source.all_ids()
    check_like_source(s, records, vectors=False, thumbnails=False)
    assert "exported" not in plain.stderr  # the summary is for files

    no_thumbnails = s.cli("export", "-", "--vectors", "--no-thumbnails", token=READ_TOKEN)
    header, records = lines_of(no_thumbnails.stdout)
    assert (header["vectors"], header["thumbnails"]) == (True, False) and '"thumbnail":' not in no_thumbnails.stdout
    check_like_source(s, records, vectors=True, thumbnails=False)


def test_export_where_gives_exactly_the_matching_ids(servers: Servers) -> None:
    s = servers
    done = s.cli("export", "-", "--where", "shape=circle", "--where", "n>=10", "--vectors", token=READ_TOKEN)
    assert done.returncode == 0, done.stderr
    header, records = lines_of(done.stdout)
    expected = [i for i, r in s.catalog.items() if r.fields and r.fields["shape"].string_value == "circle"
                and r.fields["n"].int_value >= 10]
    assert len(expected) == 8
    assert [r.id for r in records] == sorted(expected)
    assert header["where"] == "shape=circle AND n>=10"
    check_like_source(s, records, vectors=True, thumbnails=True)
    bad = s.cli("export", "-", "--where", "shape", token=READ_TOKEN)
    assert bad.returncode == 2 and "usage:" in bad.stderr and "--where" in bad.stderr


def test_import_into_an_empty_server_gives_the_same_records_and_searches(servers: Servers) -> None:
    s = servers
    out = s.tmp / "backup.jsonl"
    assert s.cli("export", str(out), "--vectors").returncode == 0
    assert s.target.count() == 0
    done = s.cli("import", str(out), server=s.target)
    assert done.returncode == 0, done.stderr
    ids = s.source.all_ids()
    assert done.stdout.startswith(f"imported {len(ids)} records from {out} (1 batch, ")
    assert s.target.all_ids() == ids
    before, after = s.source.get(ids), s.target.get(ids)
    for image_id in ids:
        a, b = before[image_id], after[image_id]
        assert (b.uri, dict(b.metadata), b.fields, b.thumbnail, b.model) == \
               (a.uri, dict(a.metadata), a.fields, a.thumbnail, a.model), image_id
        assert b.HasField("thumbnail") == a.HasField("thumbnail")
        assert b.vector == a.vector, image_id  # bit for bit: a unit vector is stored as it comes
    for text, flt in [("a red circle", None), ("a blue square", None), ("a green star", where_filter(["n<20"])),
                      ("anything", where_filter(["shape in circle,star", "odd=true"]))]:
        expected, got = s.source.text_search(text, flt), s.target.text_search(text, flt)
        assert got and [i for i, _ in got] == [i for i, _ in expected], text
        assert got == expected, text  # the same ids and the same scores, exactly
    again = s.cli("import", str(out), "--json", server=s.target)  # the same file again: the same records
    assert again.returncode == 0 and json.loads(again.stdout)["imported"] == len(ids), again.stderr
    assert s.target.all_ids() == ids


def write_lines(path: Path, header: dict[str, Any] | str, lines: list[str], end: str = "\n") -> Path:
    text = (header if isinstance(header, str) else json.dumps(header)) + "\n" + "\n".join(lines)
    path.write_text(text + (end if lines else ""), encoding="utf-8")
    return path


def good_file(s: Servers, n: int) -> tuple[dict[str, Any], list[str]]:
    """The header and the record lines of an export of the catalog's records with n < `n` (cat-007 has no n)."""
    done = s.cli("export", "-", "--vectors", "--where", f"n<{n}")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.rstrip("\n").split("\n")
    assert [json.loads(line)["id"] for line in lines] == [f"cat-{i:03d}" for i in range(n) if i != 7]
    return json.loads(header), lines


def test_a_file_that_cannot_be_imported_writes_nothing(servers: Servers) -> None:
    """Each bad file is refused naming its line, and the target stays empty, also when the bad line comes
    after more records than one batch holds (a streaming import would have written those)."""
    s = servers
    header, lines = good_file(s, 6)
    model = s.source.model
    many = []  # 300 valid records (more than the 256 of a batch): the catalog's first six, renamed
    for k in range(300):
        obj = json.loads(lines[k % len(lines)])
        obj["id"] = f"many-{k:03d}"
        many.append(json.dumps(obj))
    short_vector = json.loads(many[0])
    short_vector["vector"] = base64.b64encode(base64.b64decode(short_vector["vector"])[:-4]).decode()
    no_vectors = s.cli("export", "-", "--where", "n<6").stdout
    cases: list[tuple[str, Path, str, int]] = [
        ("another model", write_lines(s.tmp / "m.jsonl", {**header, "model": {"name": "ViT-B-32@x", "dim": model.dim}},
                                      lines), "ViT-B-32@x", 1),
        ("another dim", write_lines(s.tmp / "d.jsonl", {**header, "model": {"name": model.name, "dim": 512}}, lines),
         "dim 512", 1),
        ("a bad line in the middle", write_lines(s.tmp / "b.jsonl", header, [*many[:280], "{oops", *many[280:]]),
         "not valid JSON", 282),
        ("a truncated last line", write_lines(s.tmp / "t.jsonl", header, [*many[:-1], many[-1][:-40]], end=""),
         "truncated", 301),
        ("a vector of the wrong length", write_lines(s.tmp / "v.jsonl", header,
                                                     [*many[:270], json.dumps(short_vector), *many[270:]]),
         f"the model's dim {model.dim} needs {4 * model.dim}", 272),
        ("an export without --vectors", s.tmp / "n.jsonl", "exported without --vectors", 1),
        ("no header", write_lines(s.tmp / "h.jsonl", lines[0], lines[1:]), "not a clipsearch records file", 1),
        ("a record without its vector", write_lines(s.tmp / "nv.jsonl", header, [*many, json.dumps({"id": "x"})]),
         "record 'x' has no vector", 302),
    ]
    (s.tmp / "n.jsonl").write_text(no_vectors, encoding="utf-8")
    for what, path, message, line in cases:
        done = s.cli("import", str(path), server=s.scratch)
        assert done.returncode == 1, (what, done.stdout, done.stderr)
        assert f"{path}: line {line}: " in done.stderr and message in done.stderr, (what, done.stderr)
        assert "nothing was imported" in done.stderr and done.stdout == "", what
        assert s.scratch.count() == 0, what
    piped = s.cli("import", "-", server=s.scratch, stdin=(s.tmp / "b.jsonl").read_bytes())
    assert piped.returncode == 1 and "standard input: line 282: " in piped.stderr, piped.stderr
    assert s.scratch.count() == 0
    with s.client(s.scratch) as client:
        with pytest.raises(RecordsFileError) as info:
            import_records(client, io.StringIO((s.tmp / "b.jsonl").read_text()))
        assert info.value.line == 282 and s.scratch.count() == 0
        try:  # what checking first prevents: a streaming import writes the batches before the bad line
            with pytest.raises(RecordsFileError), open(s.tmp / "b.jsonl", "rb") as f:
                import_records(client, f, check_first=False)
            assert s.scratch.count() == 256
        finally:
            s.scratch.delete_all()


def test_import_from_standard_input_and_from_python(servers: Servers) -> None:
    s = servers
    header, lines = good_file(s, 11)
    data = write_lines(s.tmp / "ten.jsonl", header, lines).read_bytes()
    try:
        done = s.cli("import", "-", server=s.scratch, stdin=data)
        assert done.returncode == 0 and done.stdout.startswith("imported 10 records from standard input"), done.stderr
        assert s.scratch.all_ids() == sorted(json.loads(line)["id"] for line in lines)
        s.scratch.delete_all()
        with s.client(s.scratch) as client:
            result = import_records(client, iter(data.decode().splitlines()), batch_records=3)  # lines without ends
            assert isinstance(result, ImportResult) and (result.imported, result.batches) == (10, 4)
            assert result.seconds > 0 and s.scratch.count() == 10
            out = io.StringIO()
            assert export_records(client, out, ["n>=5"], vectors=True) == 5
        got_header, records = lines_of(out.getvalue())
        assert got_header["where"] == "n>=5"
        assert [r.id for r in records] == ["cat-005", "cat-006", "cat-008", "cat-009", "cat-010"]
        original = s.source.get([r.id for r in records])
        for r in records:
            assert r.fields == original[r.id].fields and r.thumbnail == original[r.id].thumbnail
            assert r.vector == original[r.id].vector
    finally:
        s.scratch.delete_all()


def suite_records(s: Servers, suite: str, n: int) -> list[str]:
    ids = [f"{suite}-{i}" for i in range(n)]
    s.source.upsert([index_pb.VectorRecord(
        id=image_id, vector=np.random.default_rng(100 + i).standard_normal(s.source.model.dim).astype("<f4").tobytes(),
        uri=f"/{suite}/{i}.jpg", metadata={"suite": suite, "note": "old"},
        fields={"n": types_pb2.Value(int_value=i), "shape": types_pb2.Value(string_value=SHAPES[i % 4])})
        for i, image_id in enumerate(ids)])
    return ids


def get_json(s: Servers, ids: list[str]) -> dict[str, dict[str, Any]]:
    done = s.cli("get", *ids, "--json", token=READ_TOKEN)
    assert done.returncode == 0, done.stderr
    return {r["id"]: r for r in json.loads(done.stdout)["records"]}


def test_update_by_id_and_by_where(servers: Servers) -> None:
    s = servers
    ids = suite_records(s, "upd", 6)
    vectors_before = {i: r.vector for i, r in s.source.get(ids).items()}
    done = s.cli("update", "--id", "upd-0", "--id", "upd-1", "upd-2", "--set", "n=50", "--set", "ratio=0.25",
                 "--set", "ok=true", "--set", 'tags=["x", "y"]', "--set", 'taken={"$time": "2024-02-03T04:05:06Z"}',
                 "--set", 'code="007"', "--set", "label=plain text", "--meta", "note=new", "--unset", "shape")
    assert (done.returncode, done.stdout) == (0, "updated 3\n"), done.stderr
    got = get_json(s, ids)
    for image_id in ("upd-0", "upd-1", "upd-2"):
        assert got[image_id]["fields"] == {"n": 50, "ratio": 0.25, "ok": True, "tags": ["x", "y"],
                                           "taken": {"$time": "2024-02-03T04:05:06Z"}, "code": "007",
                                           "label": "plain text"}
        assert got[image_id]["metadata"] == {"suite": "upd", "note": "new"}
        assert got[image_id]["uri"] == f"/upd/{image_id[-1]}.jpg"
    assert got["upd-3"]["fields"] == {"n": 3, "shape": "star"} and got["upd-3"]["metadata"]["note"] == "old"
    assert {i: r.vector for i, r in s.source.get(ids).items()} == vectors_before  # not re-encoded
    assert s.source.count(where_filter(["suite=upd", "n=50"])) == 3

    by_where = s.cli("update", "--where", "suite=upd", "--where", "n<5", "--set", "level=2", "--json")
    assert by_where.returncode == 0, by_where.stderr
    assert json.loads(by_where.stdout) == {"updated": 2, "not_found": [], "position": 0}  # upd-0 to 2 have n=50
    got = get_json(s, ids)
    assert [i for i in ids if got[i]["fields"].get("level") == 2] == ["upd-3", "upd-4"]

    replaced = s.cli("update", "--id", "upd-5", "nope-1", "--replace", "--set", "only=1")
    assert replaced.returncode == 1 and replaced.stdout == "updated 1\n", replaced.stderr
    assert "not found: nope-1" in replaced.stderr
    got = get_json(s, ["upd-5"])["upd-5"]
    assert (got["fields"], got["metadata"]) == ({"only": 1}, {})

    for args, message in [(["--id", "a", "--where", "n=1", "--set", "n=1"], "not allowed with argument"),
                          (["--id", "a"], "nothing to change"), (["--id", "a", "--set", "novalue"], "KEY=VALUE"),
                          (["--set", "n=1"], "one of the arguments --id --where is required"),
                          (["--id", "a", "--set", "n=null"], "null is not a value"),
                          (["--id", "a", "--set", 'n={"x": 1}'], "$time")]:
        bad = s.cli("update", *args)
        assert bad.returncode == 2 and "usage:" in bad.stderr and message in bad.stderr, (args, bad.stderr)
    server_says = s.cli("update", "--id", "upd-0", "--set", "n=1", "--unset", "n")  # the server's refusal
    assert server_says.returncode == 1 and "INVALID_ARGUMENT" in server_says.stderr, server_says.stderr


def test_delete_where(servers: Servers) -> None:
    s = servers
    ids = suite_records(s, "del", 8)
    total = s.source.count()
    done = s.cli("delete", "--where", "suite=del", "--where", "n<3")
    assert (done.returncode, done.stdout) == (0, "deleted 3\n"), done.stderr
    assert sorted(s.source.get(ids)) == ids[3:]
    assert s.source.count() == total - 3 and s.source.count(where_filter(["suite=del"])) == 5
    again = s.cli("delete", "--where", "suite=del", "--where", "n<3")
    assert (again.returncode, again.stdout) == (0, "deleted 0\n"), again.stderr
    by_id = s.cli("delete", "del-3", "nope")
    assert (by_id.returncode, by_id.stdout) == (0, "deleted 1\n") and "not found: nope" in by_id.stderr
    for args, message in [(["del-4", "--where", "n=4"], "not both"), ([], "--all"), (["del-4", "--all"], "not both"),
                          (["--where", "n"], "--where")]:
        bad = s.cli("delete", *args)
        assert bad.returncode == 2 and "usage:" in bad.stderr and message in bad.stderr, (args, bad.stderr)
    assert s.source.count(where_filter(["suite=del"])) == 4


def test_deleting_everything_needs_all(servers: Servers) -> None:
    s = servers
    scratch = s.scratch
    records = list(s.catalog.values())[:5]
    try:
        scratch.upsert(records)
        refused = s.cli("delete", "--where", "suite=catalog", server=scratch)
        assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr, refused.stderr
        assert "all" in refused.stderr and scratch.count() == 5
        done = s.cli("delete", "--where", "suite=catalog", "--all", server=scratch)
        assert (done.returncode, done.stdout) == (0, "deleted 5\n") and scratch.count() == 0
        scratch.upsert(records)
        everything = s.cli("delete", "--all", server=scratch)
        assert (everything.returncode, everything.stdout) == (0, "deleted 5\n") and scratch.count() == 0
    finally:
        scratch.delete_all()


def test_a_read_token_exports_but_cannot_write(servers: Servers) -> None:
    s = servers
    header, lines = good_file(s, 3)
    path = write_lines(s.tmp / "read.jsonl", header, lines)
    exported = s.cli("export", "-", "--where", "n<3", token=READ_TOKEN)
    assert exported.returncode == 0 and len(exported.stdout.splitlines()) == 4, exported.stderr
    for args, server in [(["update", "--id", "cat-001", "--set", "n=9"], s.source),
                         (["update", "--where", "n=1", "--set", "n=9"], s.source),
                         (["delete", "--where", "n=1"], s.source), (["delete", "cat-001"], s.source),
                         (["import", str(path)], s.scratch)]:
        done = s.cli(*args, server=server, token=READ_TOKEN)
        assert done.returncode == 1 and "PERMISSION_DENIED" in done.stderr and "write" in done.stderr, (args, done)
    assert s.source.get(["cat-001"])["cat-001"].fields["n"].int_value == 1 and s.scratch.count() == 0


def test_the_python_clients(servers: Servers) -> None:
    s = servers
    ids = suite_records(s, "py", 9)
    circles = where_filter(["suite=py", "shape=circle"])
    with s.client() as client:
        pages: list[RecordPage] = []
        cursor = ""
        while True:
            page = client.scroll_page(where_filter(["suite=py"]), cursor=cursor, page_size=4, include_vectors=True)
            pages.append(page)
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert [len(p) for p in pages] == [4, 4, 1] and [r.id for p in pages for r in p] == ids
        assert pages[0][0].fields == {"n": 0, "shape": "circle"} and len(pages[0][0].vector) == 4 * s.source.model.dim
        assert [r.id for r in client.scroll(circles, page_size=1)] == ["py-0", "py-4", "py-8"]
        assert [r.id for r in client.scroll()] == s.source.all_ids()
        with_thumbnails = [r for r in client.scroll(where_filter(["suite=catalog"]), include_thumbnails=True)]
        assert {r.id for r in with_thumbnails if r.thumbnail} == {i for i, r in s.catalog.items() if r.thumbnail.data}
        result = client.update(["py-0", "py-1", "nope"], set_fields={"k": 1.5, "tags": ["a"]}, set_metadata={"m": "v"})
        assert result == UpdateResult(2, ["nope"], 0)
        py1 = client.get_records(["py-1"])[0]
        assert (py1.fields, py1.metadata) == ({"n": 1, "shape": "square", "k": 1.5, "tags": ["a"]},
                                              {"suite": "py", "note": "old", "m": "v"})
        assert client.update(where=circles, unset=["shape"]).updated == 3
        assert client.count(where_filter(["suite=py", "shape=circle"])) == 0
        for bad in [lambda: client.update(set_fields={"x": 1}), lambda: client.update(["a"], where=circles),
                    lambda: client.update("py-1", set_fields={"x": 1}),
                    lambda: client.update(["a"], set_fields={"x": object()})]:
            with pytest.raises(ValueError):
                bad()
        deleted = client.delete_where(where_filter(["suite=py", "n>=7"]))
        assert deleted == RecordsDeleted(2, 0)

    async def run() -> tuple[list[str], UpdateResult, RecordsDeleted, int]:
        async with AsyncClient(s.source.address, timeout=30, token=WRITE_TOKEN) as client:
            scrolled = [r.id async for r in client.scroll(where_filter(["suite=py"]), page_size=2)]
            page = await client.scroll_page(where_filter(["suite=py"]), page_size=3)
            assert [r.id for r in page] == ids[:3] and page.next_cursor
            updated = await client.update(where=where_filter(["suite=py"]), set_fields={"async": True})
            deleted = await client.delete_where(where_filter(["suite=py"]))
            return scrolled, updated, deleted, await client.count(where_filter(["suite=py"]))

    scrolled, updated, deleted, left = asyncio.run(run())
    assert scrolled == ids[:7] and updated.updated == 7 and deleted.deleted == 7 and left == 0
