"""Records (issue 27): exporting, updating by filter and importing a large collection, over real gRPC
(a server process apart from this client), each against a baseline measured in the same run.

    nice -n 10 python bench/bench_records.py [--n 1000000] [--parts export,update,import]
        [--cache /tmp/clipsearch-bench-records] [--searches 500] [--profile DIR [--profile-gil]]
    # the update on two server checkouts, alternated, with a control (searches beside a spinning process):
    nice -n 10 python bench/bench_records.py --parts update --update-variants default,before
        --checkout before=/path/to/other/checkout --update-rounds 2 --burn-control --name records-update-variants

The collection: N records of 512-d vectors (the clustered set of bench_index.py, as ViT-B-32's), id
`img-0000042`, a uri, one metadata entry and two typed fields (`bucket`, an int uniform in [0, 100000),
and `source`, a string). BENCHMARK SHORTCUT: it is not built through UpsertVectors (a 1M HNSW graph
built by the server takes ~20 minutes on 2 cores) but written straight into the server's SQLite store
(`SqliteStore.upsert`) with an HNSW snapshot built beside it (as bench_filters.py does), then cached under
--cache and copied for each run (the snapshot hard-linked). The server (ViT-B-32, `--pretrained none`,
which only sets the model's name and dim here: no query is encoded) serves that copy.

1. Export with vectors: ScrollRecords pages of 1000 with include_vectors, the raw stub, page after page
   (records/s, first page ms), while a thread makes an UpsertVectors of 10 records every 100 ms (its
   latency during the export against the same calls just before it); then `records_file.export_records`
   writing the JSON-lines file (end to end, to a file in the run's temporary folder). Baselines: the same rows read
   straight from the SQLite file in id order by Python's sqlite3 (keyset pages of 1000: the storage's
   speed), and through `SqliteStore.scroll` in this process (the store layer the server calls).
2. Update by filter: UpdateRecords with `bucket < B` matching --update-matches records (100,000 by
   default), setting two fields; its wall time, and the latency of BatchSearch calls (one vector query,
   k=10, one client thread, back to back) during it against the same calls before and after it; with
   --burn-control also beside a process spinning on one core for as long (what a busy core costs alone).
3. Import: `records_file.import_records` of the exported file into an empty server, against the same
   records sent as encoder workers send them (UpsertVectors of --worker-batch records, default 32 as the
   worker's --batch-size, one call in flight per worker, for each count in --worker-pushers). Each into
   its own empty server with `--index Flat` (no graph: building the graph costs the same for both paths,
   ~0.14 ms of server CPU per vector, bench_upsert.py, and would hide the difference between them).

Results: bench/results/<--name>.json and a copy of the output in <--name>.log.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_index import clustered  # noqa: E402
from bench.common import RESULTS, checkout_env, checkouts, cpu_seconds, percentiles, save, table  # noqa: E402
from clipsearch import Client  # noqa: E402
from clipsearch.v1 import (  # noqa: E402
    index_service_pb2 as index_pb,
    index_service_pb2_grpc as index_grpc,
    record_service_pb2 as record_pb,
    record_service_pb2_grpc as record_grpc,
    search_service_pb2 as search_pb,
    search_service_pb2_grpc as search_grpc,
    types_pb2,
)
from clipsearch_devkit.procs import Proc, Stack, start_redis  # noqa: E402

MODEL = "ViT-B-32@random-seed0"  # the identity of ViT-B-32 with --pretrained none
DIM, BUCKETS, PAGE, K = 512, 100_000, 1000, 10
BIG_MESSAGES = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


# --- the data set --------------------------------------------------------------------------------------

def image_id(i: int) -> str:
    return f"img-{i:07d}"


def buckets_of(n: int) -> np.ndarray:
    return np.random.default_rng(42).integers(0, BUCKETS, n)


def fields_of(i: int, bucket: int) -> dict[str, types_pb2.Value]:
    return {"bucket": types_pb2.Value(int_value=int(bucket)), "source": types_pb2.Value(string_value=f"camera-{i % 7}")}


def build(data_dir: Path, n: int) -> None:
    """The store (rows written as UpsertVectors would write them) and an HNSW snapshot of every vector;
    the vectors also as vectors.npy beside it (the worker-style import sends them)."""
    from clipsearch_server.index.segments import SegmentedIndex
    from clipsearch_server.index.snapshots import Snapshots
    from clipsearch_server.index.vector_index import HnswIndex, HnswParams, set_threads
    from clipsearch_server.storage.sqlite import ImageRecord, SqliteStore

    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    vectors = clustered(n, DIM, seed=0)
    np.save(data_dir.parent / "vectors.npy", vectors)
    buckets = buckets_of(n)
    store = SqliteStore(data_dir / "images.sqlite3")
    store.set_meta("model", MODEL)
    store.set_meta("dim", str(DIM))
    for start in range(0, n, 20_000):
        store.upsert([ImageRecord(image_id(i), vectors[i], f"/photos/{i}.jpg", {"album": f"a{i % 50}"},
                                  fields={"bucket": types_pb2.Value(int_value=int(buckets[i])),
                                          "source": types_pb2.Value(string_value=f"camera-{i % 7}")})
                      for i in range(start, min(start + 20_000, n))])
    store.close()
    print(f"build: store of {n} rows in {time.monotonic() - started:.0f}s", flush=True)
    started = time.monotonic()
    set_threads(os.cpu_count() or 1)
    params = HnswParams()
    graph = HnswIndex(DIM, params)
    for start in range(0, n, 50_000):
        stop = min(start + 50_000, n)
        graph.add(np.arange(start, stop, dtype=np.int64), vectors[start:stop])
    Snapshots(data_dir, lambda *_: graph, graph.spec).write(SegmentedIndex(graph, n), 1)
    print(f"build: HNSW graph in {time.monotonic() - started:.0f}s", flush=True)


def working_copy(cached: Path, work: Path) -> Path:
    """A copy of the cached data directory that the run may change: the store copied, the snapshot
    hard-linked (the server never rewrites a snapshot file, it writes a new one)."""
    data = work / "data"
    data.mkdir(parents=True)
    for path in cached.iterdir():
        if path.suffix == ".faiss":
            os.link(path, data / path.name)
        else:
            shutil.copy2(path, data / path.name)
    os.sync()  # else the copy's dirty pages are written back during the run (an fsync then waits for them)
    return data


# --- servers -------------------------------------------------------------------------------------------

# Server variants for the update's runs (--update-variants): "default" is this checkout's server; a
# --checkout NAME=PATH is that checkout's server and core; "switch-1ms" is this one with Python's switch
# interval at 1 ms (a sitecustomize module put first on the server's PYTHONPATH).
SWITCH_1MS = "import sys\nsys.setswitchinterval(0.001)\nprint('bench_records: variant switch-1ms', file=sys.stderr)\n"


def variant_env(work: Path, name: str, checkouts: dict[str, Path]) -> dict[str, str]:
    """The environment of the server of an --update-variants variant ({} for "default")."""
    if name in checkouts:
        return checkout_env(checkouts[name], ("server", "core"))
    if name == "default":
        return {}
    assert name == "switch-1ms", f"unknown variant {name!r} (default, switch-1ms, or a --checkout NAME)"
    folder = work / f"variant-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SWITCH_1MS)
    return {"PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])}


@contextlib.contextmanager
def server(work: Path, data: Path, redis_url: str, extra: list[str],
           env: dict[str, str] | None = None) -> Iterator[tuple[Proc, str]]:
    stack = Stack(model="ViT-B-32", redis_url=redis_url, log_dir=work / "logs", prefix=f"records-{data.name}",
                  extra_env=env or {})
    started = time.monotonic()
    proc, address = stack.start_server(data, timeout=900, extra=[
        "--pretrained", "none", "--snapshot-interval", "1000000", "--max-message-bytes", str(64 << 20), *extra])
    print(f"server on {data.name} serving in {time.monotonic() - started:.0f}s", flush=True)
    try:
        yield proc, address
    finally:
        proc.stop(timeout=120)


def model_info() -> types_pb2.ModelInfo:
    return types_pb2.ModelInfo(name=MODEL, dim=DIM)


def upsert_request(start: int, stop: int, vectors: np.ndarray, buckets: np.ndarray,
                   submitted_at_ms: int = 0) -> index_pb.UpsertVectorsRequest:
    """UpsertVectors of records start..stop built as the worker's pusher builds them."""
    return index_pb.UpsertVectorsRequest(model=model_info(), records=[
        index_pb.VectorRecord(id=image_id(i), vector=vectors[i].astype("<f4").tobytes(), uri=f"/photos/{i}.jpg",
                              metadata={"album": f"a{i % 50}"}, submitted_at_ms=submitted_at_ms,
                              fields=fields_of(i, buckets[i]))
        for i in range(start, stop)])


class Cpu:
    """CPU seconds of this process and of the server between start and stop."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server0 = cpu_seconds(pid)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.client0 = usage.ru_utime + usage.ru_stime
        self.wall0 = time.perf_counter()

    def done(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - self.wall0
        return {"wall_s": wall, "server_cpu_s": cpu_seconds(self.pid) - self.server0,
                "client_cpu_s": usage.ru_utime + usage.ru_stime - self.client0}


def drop_caches_hint(path: Path) -> float:
    """Reads a file once (so every pass finds it in the page cache alike); returns seconds taken."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(16 << 20):
            pass
    return time.perf_counter() - started


# --- 1. export -----------------------------------------------------------------------------------------

def export_sqlite(db: Path) -> dict[str, Any]:
    """The storage's speed: the rows read in id order, keyset pages of PAGE, by Python's sqlite3."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    started, count, size, after = time.perf_counter(), 0, 0, ""
    while True:
        rows = conn.execute("SELECT id, uri, metadata, fields, updated_ms, vector FROM images WHERE id > ?"
                            " ORDER BY id LIMIT ?", (after, PAGE)).fetchall()
        if not rows:
            break
        count += len(rows)
        size += sum(len(r[5]) for r in rows)
        after = rows[-1][0]
    seconds = time.perf_counter() - started
    conn.close()
    return {"records": count, "seconds": seconds, "records_per_s": count / seconds, "vector_bytes": size}


def export_store(db: Path) -> dict[str, Any]:
    """The store layer the server calls (SqliteStore.scroll with vectors: rows to StoredRecords)."""
    from clipsearch_server.storage.sqlite import SqliteStore

    store = SqliteStore(db)
    started, count, after = time.perf_counter(), 0, ""
    while True:
        page = store.scroll(after, PAGE, None, True)
        if not page:
            break
        count += len(page)
        after = page[-1].id
    seconds = time.perf_counter() - started
    store.close()
    return {"records": count, "seconds": seconds, "records_per_s": count / seconds}


def first_pages(stub: record_grpc.RecordServiceStub, times: int) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        reply = stub.ScrollRecords(record_pb.ScrollRecordsRequest(page_size=PAGE, include_vectors=True), timeout=120)
        out.append(time.perf_counter() - started)
        assert len(reply.records) == PAGE
    return out


def export_grpc(stub: record_grpc.RecordServiceStub, pid: int) -> dict[str, Any]:
    """Every record through ScrollRecords pages with vectors, one page after the other."""
    cpu = Cpu(pid)
    cursor, count, size, pages = "", 0, 0, []
    while True:
        t = time.perf_counter()
        reply = stub.ScrollRecords(record_pb.ScrollRecordsRequest(page_size=PAGE, cursor=cursor, include_vectors=True),
                                   timeout=120)
        pages.append(time.perf_counter() - t)
        count += len(reply.records)
        size += sum(len(r.vector) for r in reply.records)
        if not reply.next_cursor:
            break
        cursor = reply.next_cursor
    took = cpu.done()
    return {"records": count, "records_per_s": count / took["wall_s"], "first_page_ms": pages[0] * 1000,
            "page": percentiles(pages), "vector_bytes": size, **took}


def export_file(address: str, out: Path, pid: int) -> dict[str, Any]:
    """records_file.export_records with vectors (no thumbnails: pages of 1000) to a file."""
    from clipsearch.records_file import export_records

    marks: list[float] = []
    cpu = Cpu(pid)
    with Client(address, timeout=120) as client, \
            open(out, "w", encoding="utf-8", buffering=1 << 20) as fh:
        written = export_records(client, fh, vectors=True, thumbnails=False,
                                 progress=lambda _: marks.append(time.perf_counter()))
    took = cpu.done()
    return {"records": written, "records_per_s": written / took["wall_s"],
            "first_page_ms": (marks[0] - cpu.wall0) * 1000 if marks else None,
            "file_bytes": out.stat().st_size, **took}


def upserts(stub: index_grpc.IndexServiceStub, tag: str, stop: Callable[[int], bool], gap_s: float,
            rng: np.random.Generator) -> list[float]:
    """UpsertVectors of 10 new records every gap_s until stop(calls made); each call's latency in seconds."""
    out, i = [], 0
    while not stop(i):
        vectors = rng.standard_normal((10, DIM)).astype("<f4")
        request = index_pb.UpsertVectorsRequest(model=model_info(), records=[
            index_pb.VectorRecord(id=f"{tag}-{i}-{j}", vector=vectors[j].tobytes()) for j in range(10)])
        t = time.perf_counter()
        stub.UpsertVectors(request, timeout=60)
        out.append(time.perf_counter() - t)
        i += 1
        time.sleep(gap_s)
    return out


def part_export(args: argparse.Namespace, address: str, proc: Proc, data: Path, export_path: Path) -> dict[str, Any]:
    db = data / "images.sqlite3"
    print(f"page cache: read the store once in {drop_caches_hint(db):.1f}s", flush=True)
    rng = np.random.default_rng(7)
    result: dict[str, Any] = {}
    with grpc.insecure_channel(address, options=BIG_MESSAGES) as channel:
        records = record_grpc.RecordServiceStub(channel)
        index = index_grpc.IndexServiceStub(channel)
        result["first_page_cold_ms"] = [s * 1000 for s in first_pages(records, 3)]
        print(f"first page (fresh scroll), 3 calls: {', '.join(f'{s:.0f}' for s in result['first_page_cold_ms'])} ms",
              flush=True)
        upserts(index, "warm", lambda i: i >= 5, 0.1, rng)  # the first writes of a fresh server are not timed
        deadline = time.perf_counter() + args.upsert_quiet_s
        quiet = upserts(index, "quiet", lambda _: time.perf_counter() > deadline, 0.1, rng)
        result["sqlite"] = export_sqlite(db)
        print(f"baseline, SQLite rows in id order (Python sqlite3): {result['sqlite']['records_per_s']:,.0f} records/s",
              flush=True)
        result["store"] = export_store(db)
        print(f"baseline, SqliteStore.scroll in process: {result['store']['records_per_s']:,.0f} records/s", flush=True)
        done = threading.Event()
        during: list[float] = []
        writer = threading.Thread(
            target=lambda: during.extend(upserts(index, "during", lambda _: done.is_set(), 0.1, rng)))
        writer.start()
        spy = None
        if args.profile:
            from bench.bench_feed import profile

            spy = profile(args.profile, "server-export", proc.popen.pid, gil=args.profile_gil)
        try:
            result["grpc"] = export_grpc(records, proc.popen.pid)
        finally:
            done.set()
            writer.join()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=120)
        print(f"ScrollRecords with vectors, pages of {PAGE}: {result['grpc']['records_per_s']:,.0f} records/s, "
              f"first page {result['grpc']['first_page_ms']:.0f} ms", flush=True)
    result["upsert_quiet"] = {**percentiles(quiet), "max_ms": max(quiet) * 1000,
                              "slowest_ms": sorted((s * 1000 for s in quiet), reverse=True)[:5]}
    result["upsert_during_export"] = {**percentiles(during), "max_ms": max(during) * 1000,
                                      "slowest_ms": sorted((s * 1000 for s in during), reverse=True)[:5]}
    result["file"] = export_file(address, export_path, proc.popen.pid)
    print(f"export_records to a file: {result['file']['records_per_s']:,.0f} records/s "
          f"({result['file']['file_bytes'] / 1e9:.2f} GB)", flush=True)
    g, f = result["grpc"], result["file"]
    result["ratios"] = {
        "grpc_vs_sqlite": g["records_per_s"] / result["sqlite"]["records_per_s"],
        "grpc_vs_store": g["records_per_s"] / result["store"]["records_per_s"],
        "file_vs_sqlite": f["records_per_s"] / result["sqlite"]["records_per_s"],
        "file_vs_grpc": f["records_per_s"] / g["records_per_s"],
        "upsert_p50_during_vs_quiet": result["upsert_during_export"]["p50_ms"] / result["upsert_quiet"]["p50_ms"],
        "upsert_p99_during_vs_quiet": result["upsert_during_export"]["p99_ms"] / result["upsert_quiet"]["p99_ms"],
    }
    rows = [{"path": "SQLite rows, id order (baseline)", **result["sqlite"]},
            {"path": "SqliteStore.scroll in process", **result["store"]},
            {"path": "ScrollRecords over gRPC (raw stub)", **g},
            {"path": "export_records to a JSON-lines file", **f}]
    print(f"\n== export with vectors, {g['records']:,} records ==")
    table(rows, ["path", "records", "records_per_s", "first_page_ms", "server_cpu_s", "client_cpu_s"])
    table([{"upsert (10 records)": "before the export", **result["upsert_quiet"]},
           {"upsert (10 records)": "during the export", **result["upsert_during_export"]}],
          ["upsert (10 records)", "p50_ms", "p99_ms", "max_ms", "n"])
    return result


# --- 2. update by filter -------------------------------------------------------------------------------

def searches(stub: search_grpc.SearchServiceStub, queries: np.ndarray, stop: Callable[[int], bool]) -> list[float]:
    """BatchSearch calls of one vector query (k=10) back to back until stop(calls made); latencies in s."""
    out: list[float] = []
    while not stop(len(out)):
        q = queries[len(out) % len(queries)]
        request = search_pb.BatchSearchRequest(queries=[search_pb.BatchQuery(vector=q.astype("<f4").tobytes(), k=K)])
        t = time.perf_counter()
        reply = stub.BatchSearch(request, timeout=60)
        out.append(time.perf_counter() - t)
        assert len(reply.results[0].results) == K, reply
    return out


def part_update(args: argparse.Namespace, address: str, proc: Proc, n: int) -> dict[str, Any]:
    below = max(1, round(BUCKETS * min(args.update_matches, n) / n))
    flt = types_pb2.Filter(range=types_pb2.Range(field="bucket", lt=below))
    queries = clustered(500, DIM, seed=1)
    spy = None
    with grpc.insecure_channel(address, options=BIG_MESSAGES) as channel:
        records = record_grpc.RecordServiceStub(channel)
        search = search_grpc.SearchServiceStub(channel)
        matches = records.CountRecords(record_pb.CountRecordsRequest(filter=flt), timeout=120).count
        print(f"update: filter bucket < {below} matches {matches:,} records", flush=True)
        searches(search, queries, lambda i: i >= 50)  # warm up
        quiet_before = searches(search, queries, lambda i: i >= args.searches)
        request = record_pb.UpdateRecordsRequest(
            filter=flt, set_fields={"reviewed": types_pb2.Value(bool_value=True),
                                    "review_round": types_pb2.Value(int_value=int(time.time()))})
        reply: list[Any] = []
        done = threading.Event()

        def update() -> None:
            try:
                reply.append(records.UpdateRecords(request, timeout=3600))
            finally:
                done.set()

        if args.profile:
            from bench.bench_feed import profile

            spy = profile(args.profile, "server-update", proc.popen.pid, gil=args.profile_gil)
            time.sleep(1.0)
        cpu = Cpu(proc.popen.pid)
        thread = threading.Thread(target=update)
        thread.start()
        during = searches(search, queries, lambda _: done.is_set())
        thread.join()
        took = cpu.done()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=120)
        quiet_after = searches(search, queries, lambda i: i >= args.searches)
        burn: list[float] = []
        if args.burn_control:  # the same searches beside a process spinning on one core, for as long as the update
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            until = time.perf_counter() + took["wall_s"]
            try:
                burn = searches(search, queries, lambda _: time.perf_counter() > until)
            finally:
                spinner.kill()
                spinner.wait()
    quiet = quiet_before + quiet_after
    result = {"filter_below": below, "matches": matches, "updated": reply[0].updated, **took,
              "records_per_s": reply[0].updated / took["wall_s"],
              "search_quiet": percentiles(quiet), "search_quiet_before": percentiles(quiet_before),
              "search_quiet_after": percentiles(quiet_after), "search_during": percentiles(during)}
    result["search_during"]["max_ms"] = max(during) * 1000
    if burn:
        result["search_beside_spinner"] = percentiles(burn)
    result["search_quiet"]["max_ms"] = max(quiet) * 1000
    result["ratios"] = {"p50_during_vs_quiet": result["search_during"]["p50_ms"] / result["search_quiet"]["p50_ms"],
                        "p99_during_vs_quiet": result["search_during"]["p99_ms"] / result["search_quiet"]["p99_ms"]}
    print(f"\n== UpdateRecords by filter: {result['updated']:,} records in {took['wall_s']:.1f}s "
          f"({result['records_per_s']:,.0f}/s; server CPU {took['server_cpu_s']:.1f}s) ==")
    table([{"BatchSearch, 1 vector, k=10": name, **result[key]} for name, key in
           (("quiet (before + after)", "search_quiet"), ("quiet before", "search_quiet_before"),
            ("quiet after", "search_quiet_after"), ("during the update", "search_during"),
            ("beside a spinning process (control)", "search_beside_spinner")) if key in result],
          ["BatchSearch, 1 vector, k=10", "p50_ms", "p99_ms", "n"])
    print(f"p50 during / quiet {result['ratios']['p50_during_vs_quiet']:.2f}x, "
          f"p99 during / quiet {result['ratios']['p99_during_vs_quiet']:.2f}x (goal <= 2x)", flush=True)
    if spy is not None:
        from bench.bench_feed import summarize

        print(summarize(Path(args.profile) / "server-update.txt", top=25), flush=True)
    return result


# --- 3. import -----------------------------------------------------------------------------------------

def import_file(address: str, path: Path, pid: int) -> dict[str, Any]:
    from clipsearch.records_file import import_records

    marks: dict[str, float] = {}
    cpu = Cpu(pid)
    with Client(address, timeout=300) as client, open(path, "rb") as fh:
        done = import_records(client, fh, total=lambda _: marks.update(checked=time.perf_counter()))
    took = cpu.done()
    check_s = marks["checked"] - cpu.wall0
    return {"records": done.imported, "batches": done.batches, "records_per_s": done.imported / took["wall_s"],
            "check_s": check_s, "upload_records_per_s": done.imported / (took["wall_s"] - check_s), **took}


def import_workers(address: str, n: int, vectors: np.ndarray, buckets: np.ndarray, batch: int, pushers: int,
                   pid: int) -> dict[str, Any]:
    """The records as `pushers` encoder workers push them: each builds its batch's request and sends it,
    one call in flight per worker."""
    starts = list(range(0, n, batch))
    now = int(time.time() * 1000)
    cpu = Cpu(pid)
    with grpc.insecure_channel(address, options=BIG_MESSAGES) as channel:
        stub = index_grpc.IndexServiceStub(channel)

        def worker(w: int) -> int:
            written = 0
            for start in starts[w::pushers]:
                written += stub.UpsertVectors(upsert_request(start, min(start + batch, n), vectors, buckets, now),
                                              timeout=300).upserted
            return written

        with ThreadPoolExecutor(pushers) as pool:
            done = sum(pool.map(worker, range(pushers)))
    took = cpu.done()
    return {"records": done, "batches": len(starts), "records_per_s": done / took["wall_s"], **took}


def part_import(args: argparse.Namespace, work: Path, redis_url: str, export_path: Path, n: int,
                vectors: np.ndarray) -> dict[str, Any]:
    buckets = buckets_of(n)
    rows: list[dict[str, Any]] = []
    extra = ["--index", "Flat"]
    for round_ in range(args.import_rounds):
        def workers(pushers: int) -> Callable[[str, int], dict[str, Any]]:
            return lambda address, pid: import_workers(address, n, vectors, buckets, args.worker_batch, pushers, pid)

        def from_file(address: str, pid: int) -> dict[str, Any]:
            return import_file(address, export_path, pid)

        runs = [(f"workers: {p} x UpsertVectors of {args.worker_batch}", workers(p)) for p in args.worker_pushers]
        runs.insert(0 if round_ % 2 == 0 else len(runs), ("import_records (file)", from_file))
        for name, run in runs:
            data = work / f"import-{round_}-{len(rows)}"
            with server(work, data, redis_url, extra) as (proc, address):
                row = {"path": name, "round": round_, **run(address, proc.popen.pid)}
            shutil.rmtree(data, ignore_errors=True)
            row["server_cpu_ms_per_record"] = 1000 * row["server_cpu_s"] / row["records"]
            row["client_cpu_ms_per_record"] = 1000 * row["client_cpu_s"] / row["records"]
            rows.append(row)
            print(f"{name}: {row['records']:,} records, {row['records_per_s']:,.0f} records/s", flush=True)
    best_worker = {r["path"]: r["records_per_s"] for r in rows if r["path"].startswith("workers")}
    imports = [r["records_per_s"] for r in rows if r["path"].startswith("import")]
    ratios = {f"import_vs_{name.split(':')[1].strip().replace(' ', '')}":
              float(np.mean(imports)) / float(np.mean([r["records_per_s"] for r in rows if r["path"] == name]))
              for name in best_worker}
    print(f"\n== import of {rows[0]['records']:,} records with vectors (servers with --index Flat) ==")
    table(rows, ["path", "round", "records", "records_per_s", "check_s", "upload_records_per_s",
                 "server_cpu_ms_per_record", "client_cpu_ms_per_record"])
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x (goal >= 1)")
    return {"rows": rows, "ratios": ratios, "server_args": extra}


# --- main ----------------------------------------------------------------------------------------------

class Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--parts", default="export,update,import", help="any of build,export,update,import "
                        "(build alone: only build the cached data set)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/clipsearch-bench-records"))
    parser.add_argument("--work", type=Path, default=None, help="folder for the run's copies (default: a temp folder)")
    parser.add_argument("--upsert-quiet-s", type=float, default=15.0, help="seconds of upserts before the export")
    parser.add_argument("--update-matches", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=500, help="quiet searches before and again after the update")
    parser.add_argument("--worker-batch", type=int, default=32, help="records per push (the worker's --batch-size)")
    parser.add_argument("--worker-pushers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4],
                        help="concurrent workers pushing, one run per count")
    parser.add_argument("--import-rounds", type=int, default=1)
    parser.add_argument("--update-rounds", type=int, default=1)
    parser.add_argument("--update-variants", type=lambda s: s.split(","), default=["default"],
                        help="the update once per server variant, each --update-rounds times: default, switch-1ms "
                             "(sys.setswitchinterval(0.001) in the server), or the NAME of a --checkout")
    parser.add_argument("--checkout", action="append", default=[],
                        help="NAME=PATH of another checkout whose server (and core) an update variant NAME runs")
    parser.add_argument("--burn-control", action="store_true",
                        help="after the update, the same searches for as long beside a process spinning on a core")
    parser.add_argument("--profile", default="",
                        help="folder for py-spy profiles of the server during the gRPC export and the update")
    parser.add_argument("--profile-gil", action="store_true", help="profile only the thread holding the GIL")
    parser.add_argument("--name", default="records")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = open(RESULTS / f"{args.name}.log", "w", encoding="utf-8")
    sys.stdout = Tee(sys.__stdout__, log)  # type: ignore[assignment]
    print(f"bench_records: N={args.n:,}, parts {args.parts}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)

    cached = args.cache / f"n{args.n}" / "data"
    if not (cached / "snapshot.json").exists():
        shutil.rmtree(cached, ignore_errors=True)
        build(cached, args.n)
    vectors = np.load(cached.parent / "vectors.npy", mmap_mode="r")
    parts.discard("build")
    if not parts:
        return
    results: dict[str, Any] = {
        "n": args.n, "dim": DIM, "page_size": PAGE,
        "shortcut": "collection written into the SQLite store with an HNSW snapshot, not through UpsertVectors"}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-records-", dir=args.work) as tmp:
        work = Path(tmp)
        redis, redis_url = start_redis(work / "logs")
        export_path = work / "export.jsonl"
        try:
            if parts:
                t = time.monotonic()
                data = working_copy(cached, work)
                print(f"working copy of the {args.n:,}-record data directory in {time.monotonic() - t:.0f}s",
                      flush=True)
                # the update's runs: each --update-variants variant, --update-rounds times
                runs = [v for _ in range(args.update_rounds) for v in args.update_variants] if "update" in parts \
                    else []
                others = dict(checkouts(args.checkout, ROOT)[1:])
                updates = []
                with server(work, data, redis_url, []) as (proc, address):
                    if "export" in parts:
                        results["export"] = part_export(args, address, proc, data, export_path)
                    elif "import" in parts:
                        export_file(address, export_path, proc.popen.pid)
                    if runs and runs[0] == "default":
                        updates.append({"variant": runs.pop(0), **part_update(args, address, proc, args.n)})
                for variant in runs:
                    with server(work, data, redis_url, [], variant_env(work, variant, others)) as (proc, address):
                        assert variant != "switch-1ms" or "bench_records: variant switch-1ms" in proc.output()
                        print(f"update on a server of variant {variant}", flush=True)
                        updates.append({"variant": variant, **part_update(args, address, proc, args.n)})
                if updates:
                    results["update"] = updates[0]
                    if len(updates) > 1:
                        results["update_runs"] = updates
                        summary = [{"variant": u["variant"], "updated": u["updated"],
                                    "update s": u["wall_s"], "quiet p50": u["search_quiet"]["p50_ms"],
                                    "quiet p99": u["search_quiet"]["p99_ms"],
                                    "during p50": u["search_during"]["p50_ms"],
                                    "during p99": u["search_during"]["p99_ms"],
                                    "p99 x": u["ratios"]["p99_during_vs_quiet"],
                                    "spinner p99": u.get("search_beside_spinner", {}).get("p99_ms")} for u in updates]
                        print("\n== update runs ==")
                        table(summary, list(summary[0]))
                shutil.rmtree(data, ignore_errors=True)
            if "import" in parts:
                results["import"] = part_import(args, work, redis_url, export_path, args.n, vectors)
        finally:
            redis.stop()
    results["run_s"] = time.monotonic() - started
    print(f"run took {results['run_s']:.0f}s (without building the data set)")
    save(args.name, {"args": {k: str(v) for k, v in vars(args).items()}, **results})
    sys.stdout = sys.__stdout__
    log.close()


if __name__ == "__main__":
    main()
