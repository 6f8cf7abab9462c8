"""Typed fields end to end: SubmitImages -> queue -> real worker -> UpsertVectors -> store -> results,
their limits (INVALID_ARGUMENT naming the field and the limit), and the store's field index."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from clipsearch import Client, ImageInput, InvalidArgumentError
from clipsearch.v1 import index_service_pb2, index_service_pb2_grpc, types_pb2
from clipsearch_devkit.data import synthetic_inputs, wait_until
from clipsearch_devkit.procs import Stack, channel_for, server_and_worker
from clipsearch_server.storage.sqlite import ImageRecord, SqliteStore as Store

pytestmark = pytest.mark.timeout(240)

TAKEN = dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.timezone.utc)


class Deployed:
    def __init__(self, client: Client, address: str, model: str) -> None:
        self.client, self.address, self.model = client, address, model


@pytest.fixture(scope="module")
def deployed(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("fields")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="fields")
    with server_and_worker(stack, tmp / "data") as (address, started):
        client = Client(address, timeout=30)
        inputs = []
        for n, base in enumerate(synthetic_inputs(2, seed=5)):  # 48 images
            inputs.append(ImageInput(image=base.image, uri=base.uri, id=base.id, metadata=base.metadata, fields={
                "n": n, "price": n / 4, "even": n % 2 == 0, "taken": TAKEN + dt.timedelta(days=n),
                "tags": [f"t{n % 3}", f"u{n % 5}"],
            }))
        batch = client.submit(inputs).batch_id
        progress = wait_until(client, batch, 180)
        assert progress.indexed == len(inputs), progress
        yield Deployed(client, address, client.stats().model)
        client.close()


def test_typed_fields_come_back_with_results(deployed: Deployed) -> None:
    results = deployed.client.text_search("a red circle", k=48)
    assert len(results) == 48
    for r in results:
        n = int(r.id.split("-")[1])
        assert r.fields["n"] == n and isinstance(r.fields["n"], int) and not isinstance(r.fields["n"], bool)
        assert r.fields["price"] == n / 4 and isinstance(r.fields["price"], float)
        assert r.fields["even"] is (n % 2 == 0)
        assert r.fields["taken"] == TAKEN + dt.timedelta(days=n)
        assert r.fields["tags"] == [f"t{n % 3}", f"u{n % 5}"]
        assert r.fields["shape"] == r.metadata["shape"]  # a metadata entry is also a string field
        assert r.metadata == {"color": r.metadata["color"], "shape": r.metadata["shape"]}


@pytest.mark.parametrize("fields,message", [
    ({f"k{i}": i for i in range(63)}, "63 fields and 2 metadata entries; the limit is 64"),
    ({"x" * 257: 1}, "keys must be 1 to 256 characters"),
    ({"s": "y" * 4097}, "fields['s'] is 4097 characters, the limit is 4096"),
    ({"tags": ["a"] * 257}, "fields['tags'] has 257 items, the limit is 256"),
    ({"tags": ["a", "b" * 257]}, "fields['tags'][1] is 257 characters, the limit is 256"),
    ({"shape": "square"}, "fields['shape'] is also a metadata key"),
])
def test_field_limits_are_invalid_argument_naming_the_field(deployed: Deployed, fields: dict, message: str) -> None:
    base = synthetic_inputs(1, seed=9)[0]
    with pytest.raises(InvalidArgumentError) as err:
        deployed.client.submit([ImageInput(image=base.image, id="over", metadata=base.metadata, fields=fields)])
    assert "images[0]" in err.value.details and message in err.value.details, err.value.details
    assert len(deployed.client.text_search("a red circle", k=5)) == 5  # the server keeps running


def test_upsert_vectors_validates_fields(deployed: Deployed) -> None:
    dim = deployed.client.stats().dim
    stub = index_service_pb2_grpc.IndexServiceStub(channel_for(deployed.address))
    model = types_pb2.ModelInfo(name=deployed.model, dim=dim)
    vector = np.ones(dim, dtype="<f4").tobytes()
    bad = [({"f": types_pb2.Value(float_value=float("nan"))}, "records[0].fields['f'] is nan; floats must be finite"),
           ({"e": types_pb2.Value()}, "records[0].fields['e'] has no value")]
    for fields, message in bad:
        with pytest.raises(grpc.RpcError) as err:
            stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
                model=model, records=[index_service_pb2.VectorRecord(id="v", vector=vector, fields=fields)]),
                timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details(), err.value.details()


def test_store_replaces_and_deletes_field_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    vec = np.ones(4, dtype=np.float32) / 2
    store.upsert([ImageRecord("a", vec, metadata={"m": "x"}, fields={"n": types_pb2.Value(int_value=1)})])
    store.upsert([ImageRecord("a", vec, fields={"n": types_pb2.Value(int_value=2)})])  # same vector: same label
    store.upsert([ImageRecord("a", vec * 2 / 3, fields={"tags": types_pb2.Value(
        string_list=types_pb2.StringList(values=["p", "q", "p"]))})])  # new vector: new label
    rows = store._conn().execute("SELECT label, key, type, value FROM fields ORDER BY value").fetchall()
    assert rows == [(1, "tags", 6, "p"), (1, "tags", 6, "q")]
    store.delete(["a"])
    assert store._conn().execute("SELECT COUNT(*) FROM fields").fetchone()[0] == 0


def test_filtered_search_through_the_server(deployed: Deployed) -> None:
    from clipsearch.v1.types_pb2 import Filter, FilterList, Match, Range, StringList, TimeRange

    client = deployed.client
    few = Filter(range=Range(field="n", lt=5))
    for k in (3, 10):
        hits = client.text_search("a red circle", k=k, where=few)
        assert len(hits) == min(k, 5) and all(h.fields["n"] < 5 for h in hits)
    circles = Filter(match=Match(field="shape", any_of=StringList(values=["circle"])))
    hits = client.text_search("a blue square", k=48, where=circles)
    assert len(hits) == sum(1 for i in synthetic_inputs(2, seed=5) if i.metadata["shape"] == "circle")
    assert all(h.metadata["shape"] == "circle" for h in hits)
    week = Filter(all=FilterList(filters=[
        Filter(time_range=TimeRange(field="taken", gte_ms=int(TAKEN.timestamp() * 1000),
                                    lt_ms=int((TAKEN + dt.timedelta(days=7)).timestamp() * 1000))),
        Filter(match=Match(field="even", boolean=True)),
    ]))
    hits = client.image_search(id="img-2", k=10, where=week)
    assert sorted(h.id for h in hits) == ["img-0", "img-4", "img-6"]  # n in {0, 2, 4, 6}, the query image left out
    with pytest.raises(InvalidArgumentError) as err:
        client.text_search("a red circle", k=5, where=Filter(range=Range(field="n")))
    assert "filter.range sets no bound" in err.value.details
    assert len(client.text_search("a red circle", k=5)) == 5  # the server keeps running


def cli(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIPSEARCH_SERVER": server}
    return subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_index_metadata_file_and_search_where(deployed: Deployed, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    meta = {}
    for n, base in enumerate(synthetic_inputs(1, seed=21)[:6]):
        rel = f"{'sub/' if n % 2 else ''}p{n}.png"
        (folder / rel).write_bytes(base.image)
        meta[rel] = {"cli": "yes", "rank": n, "score": n + 0.5, "flag": n == 0,
                     "day": {"$time": f"2024-01-0{n + 1}T00:00:00Z"}, "labels": [f"l{n % 2}", "all"]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    done = cli("index", str(folder), "--metadata", str(tmp_path / "meta.json"), server=deployed.address)
    assert done.returncode == 0 and "indexed 6, failed 0" in done.stdout, done.stdout + done.stderr

    def search(*where: str) -> list[dict]:
        args = ["search", "a red circle", "-k", "10", "--json"] + [x for w in where for x in ("--where", w)]
        out = cli(*args, server=deployed.address)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["results"]

    def ranks(results: list[dict]) -> list[int]:
        return sorted(r["fields"]["rank"] for r in results)

    assert ranks(search("cli=yes")) == [0, 1, 2, 3, 4, 5]
    assert ranks(search("cli=yes", "rank>=2", "rank<5")) == [2, 3, 4]
    assert ranks(search("cli=yes", "rank!=3")) == [0, 1, 2, 4, 5]
    assert ranks(search("labels in l1,none")) == [1, 3, 5]
    assert ranks(search("day>2024-01-04")) == [4, 5]
    assert ranks(search("day<=2024-01-02T00:00:00+00:00", "flag=false")) == [1]
    assert ranks(search("score>4.9")) == [5]
    first = search("rank=0")
    assert len(first) == 1 and first[0]["fields"]["day"] == {"$time": "2024-01-01T00:00:00Z"}
    assert first[0]["fields"]["labels"] == ["l0", "all"] and first[0]["fields"]["flag"] is True
    bad = cli("search", "x", "--where", "rank>abc", server=deployed.address)
    assert bad.returncode == 2 and "needs a number or a date/time" in bad.stderr
    (tmp_path / "bad.json").write_text(json.dumps({"p0.png": {"day": {"$time": "yesterday"}}}))
    bad = cli("index", str(folder), "--metadata", str(tmp_path / "bad.json"), server=deployed.address)
    assert bad.returncode == 2 and "'yesterday' is not an RFC 3339 time" in bad.stderr


def test_min_score_leaves_out_lower_scores(deployed: Deployed) -> None:
    from clipsearch.v1.types_pb2 import Filter, Range

    client = deployed.client
    top = client.text_search("a red circle", k=20)
    threshold = top[7].score
    kept = client.text_search("a red circle", k=20, min_score=threshold)
    assert [h.id for h in kept] == [h.id for h in top if h.score >= threshold] and len(kept) >= 8
    assert len(kept) < 20 and all(h.score >= threshold for h in kept)
    filtered = client.image_search(id="img-3", k=10, where=Filter(range=Range(field="n", lt=20)), min_score=2.0)
    assert filtered == []
    with pytest.raises(InvalidArgumentError) as err:
        client.text_search("a red circle", k=5, min_score=float("nan"))
    assert "min_score must be a finite number" in err.value.details
    out = cli("search", "a red circle", "-k", "20", "--json", "--min-score", str(threshold), server=deployed.address)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["results"]) == len(kept)


def test_a_timestamp_beyond_year_9999_is_refused_and_never_crashes_the_client() -> None:
    from clipsearch.fields import from_value, to_value
    from clipsearch_server.api.errors import InvalidArgument
    from clipsearch_server.storage import fields as typed
    late = to_value(dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-2))))  # 10000-01-01 UTC
    with pytest.raises(InvalidArgument, match="taken"):
        typed.validate({"taken": late}, {}, "records[0]")
    assert from_value(late) == late.time_ms  # a value stored before the check: readable, not an OverflowError
