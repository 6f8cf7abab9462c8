"""Pages, BatchSearch, weighted terms and near-duplicate collapse end to end: a real server and worker with
the tiny OpenCLIP model, through gRPC, the Python clients (sync and async) and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from typing import Iterator

import grpc
import numpy as np
import pytest

from clipsearch import AsyncClient, Client, ImageInput, InvalidArgumentError, NotFoundError, Query, SearchResult, Term
from clipsearch.v1 import (
    index_service_pb2,
    index_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
    types_pb2,
)
from clipsearch.v1.types_pb2 import Filter, Match, Range, StringList
from clipsearch_devkit.data import synthetic_inputs, wait_until
from clipsearch_devkit.procs import Stack, channel_for, server_and_worker

pytestmark = pytest.mark.timeout(240)

DUP_GROUPS, DUP_SIZE = 3, 3


class Deployed:
    def __init__(self, client: Client, address: str, count: int) -> None:
        self.client, self.address, self.count = client, address, count


@pytest.fixture(scope="module")
def deployed(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """48 synthetic images (6 colours x 4 shapes x 2) with a field n, plus 9 near-identical vectors
    (3 groups of 3, field dup=yes) written through UpsertVectors."""
    tmp = tmp_path_factory.mktemp("batch")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="batch")
    with server_and_worker(stack, tmp / "data") as (address, started):
        client = Client(address, timeout=30)
        inputs = [ImageInput(image=b.image, uri=b.uri, id=b.id, metadata=b.metadata, fields={"n": n})
                  for n, b in enumerate(synthetic_inputs(2, seed=5))]
        progress = wait_until(client, client.submit(inputs).batch_id, 180)
        assert progress.indexed == len(inputs), progress
        stats = client.stats()
        rng = np.random.default_rng(9)
        records = []
        for g in range(DUP_GROUPS):
            base = rng.standard_normal(stats.dim).astype(np.float32)
            for j in range(DUP_SIZE):
                vector = base + 0.005 * rng.standard_normal(stats.dim).astype(np.float32)
                records.append(index_service_pb2.VectorRecord(id=f"dup{g}-{j}", vector=vector.astype("<f4").tobytes(),
                                                              metadata={"dup": "yes"}))
        stub = index_service_pb2_grpc.IndexServiceStub(channel_for(address))
        stub.UpsertVectors(index_service_pb2.UpsertVectorsRequest(
            model=types_pb2.ModelInfo(name=stats.model, dim=stats.dim), records=records), timeout=10)
        yield Deployed(client, address, len(inputs) + len(records))
        client.close()


def key(results: list[SearchResult]) -> list[tuple[str, float]]:
    return [(r.id, r.score) for r in results]


def test_pages_of_7_equal_one_big_page(deployed: Deployed) -> None:
    client = deployed.client
    everything = client.text_search("a red circle", k=1000)
    assert len(everything) == deployed.count and everything.next_page_token == ""
    assert key(everything) == sorted(key(everything), key=lambda p: (-p[1], p[0]))  # ties by id
    pages, token = [], ""
    while True:
        page = client.text_search("a red circle", k=7, page_token=token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [7] * (deployed.count // 7) + [deployed.count % 7]
    assert [pair for p in pages for pair in key(p)] == key(everything)


def test_pages_with_filter_and_min_score_async(deployed: Deployed) -> None:
    flt = Filter(range=Range(field="n", gte=10, lt=40))
    threshold = deployed.client.text_search("a blue square", k=1000, where=flt)[14].score  # 15 results >= it

    async def follow() -> tuple[list[list[SearchResult]], list[SearchResult]]:
        async with AsyncClient(deployed.address, timeout=30) as client:
            out, token = [], ""
            while True:
                page = await client.text_search("a blue square", k=4, where=flt, min_score=threshold, page_token=token)
                out.append(page)
                token = page.next_page_token
                if not token:
                    break
            batched, = await client.batch_search([Query(text="a blue square", k=4, where=flt, min_score=threshold)])
            return out, batched

    found, batched = asyncio.run(follow())
    assert key(batched) == key(found[0]) and batched.next_page_token
    exact = [r for r in deployed.client.text_search("a blue square", k=1000, where=flt) if r.score >= threshold]
    assert len(exact) >= 15
    assert [pair for p in found for pair in key(p)] == key(exact)
    assert all(10 <= r.fields["n"] < 40 for p in found for r in p)


def test_page_token_belongs_to_its_query(deployed: Deployed) -> None:
    token = deployed.client.text_search("a red circle", k=3).next_page_token
    for bad, message in [(dict(text="a green star"), "belongs to another query"),
                         (dict(text="a red circle", min_score=0.1), "belongs to another query"),
                         (dict(text="a red circle", page_token="garbage!"), "not a token this service issued")]:
        with pytest.raises(InvalidArgumentError) as err:
            deployed.client.text_search(k=3, **{"page_token": token, **bad})
        assert message in err.value.details
    with pytest.raises(InvalidArgumentError, match="depth limit"):  # 9,995 returned + k 10 > 10,000
        deployed.client.text_search("a red circle", k=10, page_token=deeper(token, 9_995))


def deeper(token: str, returned: int) -> str:
    """The same cursor as if `returned` results had been paged through already."""
    body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    body["n"] = returned
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def test_batch_equals_single_calls(deployed: Deployed) -> None:
    client = deployed.client
    red = Filter(match=Match(field="color", any_of=StringList(values=["red"])))
    image = synthetic_inputs(1, seed=77)[0].image
    queries = [Query(text="a red circle", k=5), Query(text="a blue star", k=3, where=red),
               Query(id="img-4", k=4), Query(image=image, k=6, where=red), Query(text="a green square", k=5, where=red),
               Query(text="a red circle", k=5, page_token=client.text_search("a red circle", k=5).next_page_token)]
    pages = client.batch_search(queries)
    singles = [client.text_search("a red circle", k=5), client.text_search("a blue star", k=3, where=red),
               client.image_search(id="img-4", k=4), client.image_search(image, k=6, where=red),
               client.text_search("a green square", k=5, where=red),
               client.text_search("a red circle", k=5, page_token=queries[5].page_token)]
    assert [key(p) for p in pages] == [key(s) for s in singles]
    assert [p.next_page_token != "" for p in pages] == [True] * 6
    assert "img-4" not in [r.id for r in pages[2]]  # the query image is left out
    assert all(r.metadata["color"] == "red" for r in pages[1] + pages[3] + pages[4])
    # A batch query's token pages on through TextSearch: same query, same fingerprint.
    assert key(client.text_search("a red circle", k=5, page_token=pages[0].next_page_token)) == key(pages[5])


def test_batch_raw_vector_query(deployed: Deployed) -> None:
    dim = deployed.client.stats().dim
    rng = np.random.default_rng(9)  # the fixture's first group base vector
    base = rng.standard_normal(dim).astype(np.float32)
    page, = deployed.client.batch_search([Query(vector=base.tolist(), k=3)])
    assert sorted(r.id for r in page) == [f"dup0-{j}" for j in range(DUP_SIZE)]
    assert page[0].score > 0.99


def test_collapse_near_duplicates(deployed: Deployed) -> None:
    dups = Filter(match=Match(field="dup", any_of=StringList(values=["yes"])))
    page = deployed.client.image_search(id="dup1-0", k=5, where=dups, collapse_threshold=0.99)
    # dup1-0 is left out (the query); dup1-1 keeps dup1-2; the other groups keep one each.
    assert len(page) == 3 and page.next_page_token == ""
    assert page[0].id in ("dup1-1", "dup1-2") and page[0].collapsed_ids == [({"dup1-1", "dup1-2"} - {page[0].id}).pop()]
    for result in page[1:]:
        group = result.id.split("-")[0]
        assert sorted([result.id, *result.collapsed_ids]) == [f"{group}-{j}" for j in range(DUP_SIZE)]
    plain = deployed.client.image_search(id="dup1-0", k=5, where=dups)
    assert len(plain) == 5 and all(r.collapsed_ids == [] for r in plain)
    with pytest.raises(InvalidArgumentError, match="collapse_threshold"):
        deployed.client.text_search("a red circle", collapse_threshold=1.5)


def rank_of(results: list[SearchResult], shape: str) -> float:
    """Mean rank of the red images of this shape."""
    ranks = [i for i, r in enumerate(results) if r.metadata.get("color") == "red" and r.metadata.get("shape") == shape]
    return sum(ranks) / len(ranks)


def test_negative_term_steers_away(deployed: Deployed) -> None:
    """'a red shape' - 0.5 x 'a circle': red circles drop relative to red squares."""
    red = Filter(match=Match(field="color", any_of=StringList(values=["red"])))
    plain, steered = deployed.client.batch_search([
        Query(text="a red shape", k=8, where=red),
        Query(terms=[Term(text="a red shape"), Term(text="a circle", weight=-0.5)], k=8, where=red)])
    assert len(plain) == len(steered) == 8
    assert rank_of(steered, "circle") > rank_of(plain, "circle")
    assert rank_of(steered, "circle") - rank_of(steered, "square") > rank_of(plain, "circle") - rank_of(plain, "square")
    assert all(r.metadata.get("shape") != "circle" for r in steered[:2])


def test_batch_errors_name_the_query(deployed: Deployed) -> None:
    client = deployed.client
    dim = client.stats().dim
    cases = [
        ([Query(text="a"), Query(text="b", k=0)], InvalidArgumentError, "queries[1]: k must be between 1 and 1000"),
        ([Query(text="a"), Query(text="b"), Query(id="no-such-image")], NotFoundError, "queries[2]: no indexed image"),
        ([Query(vector=[1.0] * (dim + 1))], InvalidArgumentError, f"queries[0]: vector is {4 * (dim + 1)} bytes"),
        ([Query(terms=[Term(text="a red circle"), Term(text="a red circle", weight=-1)])], InvalidArgumentError,
         "queries[0]: the weighted terms cancel out"),
        ([Query(terms=[Term(text="x", weight=0.0)])], InvalidArgumentError, "queries[0]: terms[0].weight must be"),
        ([Query(text="a")] * 65, InvalidArgumentError, "65 queries, the limit is 64"),
        ([], InvalidArgumentError, "holds no queries"),
    ]
    for queries, error, message in cases:
        with pytest.raises(error) as err:
            client.batch_search(queries)
        assert message in err.value.details, err.value.details
    with pytest.raises(grpc.RpcError) as raw:
        search_service_pb2_grpc.SearchServiceStub(channel_for(deployed.address)).BatchSearch(
            search_service_pb2.BatchSearchRequest(queries=[search_service_pb2.BatchQuery(k=3)]), timeout=10)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "queries[0]: no query" in raw.value.details()


def test_cli_pages_and_terms(deployed: Deployed) -> None:
    env = {**os.environ, "CLIPSEARCH_SERVER": deployed.address}

    def search(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "clipsearch", "search", *args, "--json"], capture_output=True,
                              text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = search("a red circle", "-k", "4", "--where", "shape=circle")
    second = search("a red circle", "-k", "4", "--where", "shape=circle", "--page-token", first["next_page_token"])
    both = search("a red circle", "-k", "8", "--where", "shape=circle")
    assert [r["id"] for r in first["results"] + second["results"]] == [r["id"] for r in both["results"]]
    assert first["next_page_token"] and second["next_page_token"]
    last = search("a red circle", "-k", "1000", "--where", "shape=circle")
    assert last["next_page_token"] == "" and len(last["results"]) == 12
    collapsed = search("--id", "dup1-0", "-k", "5", "--where", "dup=yes", "--collapse", "0.99")
    assert [len(r["collapsed_ids"]) for r in collapsed["results"]] == [1, 2, 2]
    steered = search("a red shape", "-k", "8", "--where", "color=red", "--minus", "a circle:0.5")
    steered_query = Query(terms=[Term(text="a red shape"), Term(text="a circle", weight=-0.5)], k=8,
                          where=Filter(match=Match(field="color", any_of=StringList(values=["red"]))))
    assert [r["id"] for r in steered["results"]] == [
        r.id for r in deployed.client.batch_search([steered_query])[0]]


def test_an_error_shared_by_several_queries_names_each_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One failure can reach several queries of a batch as the same exception object (a micro-batch's
    encode failing for all its texts): each query's error names that query once. The prefix used to be
    written into the shared object, so the second query's message read "queries[1]: queries[0]: ..."."""
    from clipsearch_server.api import search_api
    from clipsearch_server.api.errors import Unavailable

    shared = Unavailable("the text encoder failed")

    async def fail(engine: object, request: object, kind: object) -> None:
        raise shared

    monkeypatch.setattr(search_api, "_build", fail)

    async def build(i: int) -> str:
        with pytest.raises(Unavailable) as err:
            await search_api.build(None, None, "text", f"queries[{i}].")  # type: ignore[arg-type]
        return str(err.value)

    async def both() -> list[str]:
        return list(await asyncio.gather(build(0), build(1)))

    assert asyncio.run(both()) == ["queries[0]: the text encoder failed", "queries[1]: the text encoder failed"]
    assert str(shared) == "the text encoder failed"
