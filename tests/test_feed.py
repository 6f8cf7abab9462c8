"""The batched ingest path: decode processes (`--decode-processes`) and one finish script per batch keep
every behaviour of the per-image path (failures with reasons, exactly-once counts, same vectors)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import redis as redislib

from clipsearch import Client, ImageInput
from clipsearch_core import jobqueue, settings
from clipsearch_core.jobqueue import Job, Keys
from clipsearch_core.model import load_encoder
from clipsearch_devkit.data import wait_until
from clipsearch_devkit.photos import photo_jpeg
from clipsearch_devkit.procs import Proc, Stack, free_port, wait_for
from clipsearch_worker.worker import Worker, WorkerConfig


@contextmanager
def _running(worker: Worker) -> Iterator[None]:
    """The worker's loop on a thread of this process for the block; then stopped, joined and closed."""
    stop = threading.Event()
    loop = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    loop.start()
    try:
        yield
    finally:
        stop.set()
        loop.join(timeout=30)
        worker.close()
    assert not loop.is_alive()


def children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    return [int(p) for task in Path(f"/proc/{pid}/task").iterdir() for p in (task / "children").read_text().split()]


def test_worker_with_decode_processes(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    photos = [photo_jpeg(seed, 640, 480) for seed in range(10)]
    for i, data in enumerate(photos[:5]):
        (root / f"p{i}.jpg").write_bytes(data)
    (root / "broken.jpg").write_bytes(photos[0][: len(photos[0]) // 3])
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    worker = stack.start_worker(address, ["--decode-processes", "2", "--batch-size", "4", "--allowed-root", str(root)])
    procs.append(worker)
    with Client(address) as client:
        inputs = [ImageInput(uri=str(root / f"p{i}.jpg"), id=f"path-{i}") for i in range(5)]
        inputs += [ImageInput(image=p, id=f"up-{i}") for i, p in enumerate(photos[5:], start=5)]
        inputs += [ImageInput(uri=str(root / "broken.jpg"), id="broken"),
                   ImageInput(uri=str(root / "missing.jpg"), id="missing"),
                   ImageInput(uri=str(tmp_path / "outside.jpg"), id="outside"),
                   ImageInput(image=b"not an image at all", id="junk")]
        batch = client.submit(inputs).batch_id
        progress = wait_until(client, batch, 120)
        assert (progress.indexed, progress.failed) == (10, 4), progress
        reasons = {f.id: f.reason for f in client.failures(batch)}
        assert set(reasons) == {"broken", "missing", "outside", "junk"}
        assert "cannot decode" in reasons["broken"] and "outside the allowed roots" in reasons["outside"]
        assert all("Traceback" not in r and " at 0x" not in r for r in reasons.values())
        for i, data in enumerate(photos):  # the server decodes queries in its own process: same vectors
            hit = client.image_search(data, k=1)[0]
            assert hit.id in (f"path-{i}", f"up-{i}") and hit.score > 0.99, (i, hit)
    decoders = [p for p in children(worker.popen.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert decoders  # the decoding really ran in (spawned) processes
    assert "2 decode processes started" in worker.output()  # both started with the worker, not on demand
    assert worker.stop() == 0
    assert "stopped after 14 jobs" in worker.output()


def test_batched_finish_counts_each_job_once(redis_url: str) -> None:
    r = jobqueue.connect(redis_url)
    keys = Keys(f"t-finish-{time.time_ns()}")
    jobqueue.ensure_group(r, keys)
    jobs = [Job(id=f"img-{i}", has_blob=True, batch_id="b1", metadata={"n": str(i)}) for i in range(300)]
    jobqueue.submit(r, keys, jobs, [b"x" * 10] * len(jobs), "b1")
    taken = jobqueue.read_jobs(r, keys, "w1", 300, 100)
    outcomes = [(job, "cannot decode image: test" if i % 100 == 0 else None) for i, job in enumerate(taken)]
    assert jobqueue.finish(r, keys, outcomes) == 300  # two script calls (FINISH_CHUNK 256)
    assert jobqueue.finish(r, keys, outcomes) == 0  # already finished: nothing counts twice
    assert jobqueue.get_progress(r, keys, "b1") == jobqueue.Progress(300, 297, 3)
    assert jobqueue.get_progress(r, keys) == jobqueue.Progress(300, 297, 3)
    failures = jobqueue.list_failures(r, keys)
    assert sorted(f.id for f in failures) == ["img-0", "img-100", "img-200"]
    assert all(f.reason == "cannot decode image: test" and f.job.metadata == {"n": f.id[4:]} for f in failures)
    assert r.exists(keys.blob(taken[0].uid)) and r.ttl(keys.blob(taken[0].uid)) > 0  # kept for a retry
    assert not r.exists(keys.blob(taken[1].uid))
    assert int(r.get(keys.queued_bytes)) == 0 and r.xlen(keys.jobs) == 0
    assert r.xpending(keys.jobs, jobqueue.GROUP)["pending"] == 0
    assert isinstance(r, redislib.Redis)


def test_decode_overlap_is_off_only_for_a_model_with_every_core() -> None:
    def config(overlap: str, threads: int) -> WorkerConfig:
        argv = ["--decode-overlap", overlap, "--threads", str(threads)]
        return WorkerConfig.from_args(settings.parse("worker", argv, "t", "t"))

    cores = len(os.sched_getaffinity(0))
    assert not config("auto", 0).overlaps("cpu")  # torch's default: a thread per core, decoding would slow it
    assert not config("auto", cores).overlaps("cpu")
    assert config("auto", 0).overlaps("cuda")
    assert config("auto", cores - 1).overlaps("cpu") == (cores > 1)
    assert config("on", 0).overlaps("cpu") and not config("off", 1).overlaps("cuda")


def test_worker_without_decode_overlap_indexes_every_image(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    photos = [photo_jpeg(seed, 320, 240) for seed in range(7)]
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    worker = stack.start_worker(address, ["--decode-overlap", "off", "--batch-size", "2", "--decode-threads", "2"])
    procs.append(worker)
    with Client(address) as client:
        inputs = [ImageInput(image=p, id=f"img-{i}") for i, p in enumerate(photos)]
        batch = client.submit([*inputs, ImageInput(image=photos[0][:500], id="broken")]).batch_id
        progress = wait_until(client, batch, 120)
        assert (progress.indexed, progress.failed) == (7, 1), progress
        for i, data in enumerate(photos):
            hit = client.image_search(data, k=1)[0]
            assert hit.id == f"img-{i}" and hit.score > 0.99, (i, hit)
    assert "decoding and pushing beside the model: off" in worker.output()
    assert worker.stop() == 0


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_a_batch_is_pushed_while_the_next_one_is_encoded(overlap: str, stack: Stack, procs: list[Proc],
                                                         tmp_path: Path) -> None:
    """With overlap, the pusher thread sends a batch's vectors (UpsertVectors, then the acknowledgement)
    while the model encodes the next batch; pushes stay one at a time, in order. Without, nothing
    overlaps. A real server, Redis and worker loop (in this process, so that each push is slowed down
    by 0.3 s and the pushes and forward passes can be timed)."""
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    argv = [*stack.common(), "--server", address, "--batch-size", "2", "--decode-threads", "2",
            "--decode-overlap", overlap, "--thumbnail-size", "0"]
    config = WorkerConfig.from_args(settings.parse("worker", argv, "t", "t"))
    worker = Worker(config, load_encoder(config.model, 1))
    spans: dict[str, list[tuple[float, float]]] = {"push": [], "encode": []}

    def timed(name: str, call):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            if name == "push":
                time.sleep(0.3)
            result = call(*args, **kwargs)
            spans[name].append((started, time.perf_counter()))
            return result
        return wrapper

    worker._push = timed("push", worker._push)  # type: ignore[method-assign]
    worker.encoder.encode_images = timed("encode", worker.encoder.encode_images)  # type: ignore[method-assign]
    with _running(worker), Client(address) as client:
        batch = client.submit([ImageInput(image=photo_jpeg(i, 96, 64), id=f"o-{i}") for i in range(8)]).batch_id
        progress = wait_until(client, batch, 60)
        assert progress.indexed == 8, progress
        assert client.stats().count == 8
    pushes = sorted(spans["push"])
    assert len(pushes) >= 4 and all(a[1] <= b[0] for a, b in zip(pushes, pushes[1:])), pushes  # one at a time
    during_a_push = [e for e in spans["encode"] if any(p[0] < e[0] < p[1] for p in pushes)]
    assert bool(during_a_push) == (overlap == "on"), (spans, overlap)


def _device_decode_worker(stack: Stack, address: str, overlap: str) -> Worker:
    argv = [*stack.common(), "--server", address, "--batch-size", "2", "--decode-threads", "2",
            "--decode-overlap", overlap, "--thumbnail-size", "0", "--device-decode", "--decode-stream", overlap]
    config = WorkerConfig.from_args(settings.parse("worker", argv, "t", "t"))
    worker = Worker(config, load_encoder(config.model, 1))
    assert worker.encoder.own_decode_stream == (overlap == "on")  # the option reaches an in-process worker's model
    return worker


def test_an_upload_whose_bytes_are_gone_fails_alone(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    """An uploaded image whose bytes left Redis before a worker took it (deleted, or evicted by a
    maxmemory policy) fails with its reason; its neighbours are indexed and the worker keeps running.
    (Its decode result once lacked the thumbnail slot, and unpacking it crashed the worker, again at
    each delivery.) A real server, Redis and worker process."""
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    r, keys = redislib.Redis.from_url(stack.redis_url), Keys(stack.prefix)
    with Client(address) as client:
        batch = client.submit([ImageInput(image=photo_jpeg(i, 96, 64), id=f"g-{i}") for i in range(3)]).batch_id
        [gone] = [Job.from_entry(entry_id, fields) for entry_id, fields in r.xrange(keys.jobs)
                  if fields[b"id"] == b"g-1"]
        assert r.delete(keys.blob(gone.uid)) == 1
        worker = stack.start_worker(address, ["--batch-size", "4"])
        procs.append(worker)
        progress = wait_until(client, batch, 60)
        reasons = {f.id: f.reason for f in client.failures(batch)}
        assert (progress.indexed, progress.failed) == (2, 1), (progress, reasons)
        assert "no longer in the queue" in reasons["g-1"], reasons
        assert client.stats().count == 2
        assert worker.popen.poll() is None, worker.output()
    r.close()


def _timed(spans: list[tuple[float, float]], call, delay: float = 0.2):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        time.sleep(delay)
        result = call(*args, **kwargs)
        spans.append((started, time.perf_counter()))
        return result
    return wrapper


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_the_next_batch_is_decoded_on_the_device_while_the_model_encodes(overlap: str, stack: Stack,
                                                                         procs: list[Proc], tmp_path: Path) -> None:
    """With --device-decode and overlap, a device-decode thread decodes batch N+1 on the device while
    the main thread runs the model on batch N (in order: every image gets its own vector); without
    overlap, one after the other. A real server, Redis and worker loop in this process (each device
    decode and forward pass slowed down by 0.2 s, so that they can be timed)."""
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    worker = _device_decode_worker(stack, address, overlap)
    decodes: list[tuple[float, float]] = []
    encodes: list[tuple[float, float]] = []
    worker._decode_on_device = _timed(decodes, worker._decode_on_device)  # type: ignore[method-assign]
    worker.encoder.encode_images = _timed(encodes, worker.encoder.encode_images)  # type: ignore[method-assign]
    photos = [photo_jpeg(i, 96, 64) for i in range(8)]
    with _running(worker), Client(address) as client:
        batch = client.submit([ImageInput(image=p, id=f"d-{i}") for i, p in enumerate(photos)]).batch_id
        assert wait_until(client, batch, 60).indexed == 8
        assert [client.image_search(p, k=1)[0].id for p in photos] == [f"d-{i}" for i in range(8)]
    assert len(decodes) >= 4 and len(encodes) >= 4
    during_a_pass = [d for d in decodes if any(e[0] < d[0] < e[1] for e in encodes)]
    assert bool(during_a_pass) == (overlap == "on"), (decodes, encodes, overlap)


def test_a_failure_on_the_device_decode_thread_stops_the_worker_and_loses_no_image(
        stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    """An unexpected error while decoding ahead on the device is raised by the worker's loop (it must
    not hang or end as if the queue were empty), and the jobs it held go back to the queue: a fresh
    worker indexes every image."""
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    worker = _device_decode_worker(stack, address, "on")

    class Boom(Exception):
        pass

    def fail(prepared):  # type: ignore[no-untyped-def]
        raise Boom("the device fell over")

    worker._decode_on_device = fail  # type: ignore[method-assign]
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(threading.Event())
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            raised.append(exc)

    loop = threading.Thread(target=run, daemon=True)
    with Client(address) as client:
        batch = client.submit([ImageInput(image=photo_jpeg(i, 96, 64), id=f"f-{i}") for i in range(6)]).batch_id
        loop.start()
        loop.join(timeout=60)
        worker.close()
        assert not loop.is_alive()
        assert [type(e) for e in raised] == [Boom]
        assert client.progress(batch).indexed == 0
        procs.append(stack.start_worker(address, ["--batch-size", "2", "--device-decode"]))
        assert wait_until(client, batch, 90).indexed == 6


class _ServerError(grpc.RpcError):
    """What the stub raises for a refusal: an unexpected error in the server (INTERNAL)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    def details(self) -> str:
        return "internal error (request id test)"


def test_a_push_refused_by_a_server_error_is_sent_again_a_few_times(stack: Stack, procs: list[Proc],
                                                                   tmp_path: Path) -> None:
    """A push refused for a reason that is not about a record (INTERNAL: an unexpected error in the
    server) is sent again, whole, up to three times: one such error does not fail a batch (it once failed
    256 images at once); one that every try meets fails the push after four sends, with the reason. A
    real server, Redis and worker loop in this process; the refusals are raised in place of the call."""
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    argv = [*stack.common(), "--server", address, "--batch-size", "8", "--decode-threads", "2", "--thumbnail-size", "0"]
    config = WorkerConfig.from_args(settings.parse("worker", argv, "t", "t"))
    worker = Worker(config, load_encoder(config.model, 1))
    upsert = worker._index.UpsertVectors
    calls: list[list[str]] = []

    def refused(request, **kwargs):  # type: ignore[no-untyped-def]
        ids = [record.id for record in request.records]
        calls.append(ids)
        if len(calls) == 1 or ids[0].startswith("always-"):
            raise _ServerError()
        return upsert(request, **kwargs)

    worker._index.UpsertVectors = refused  # type: ignore[method-assign]
    with Client(address) as client:
        once = client.submit([ImageInput(image=photo_jpeg(i, 96, 64), id=f"once-{i}") for i in range(8)]).batch_id
        with _running(worker):
            progress = wait_until(client, once, 60)
            assert (progress.indexed, progress.failed) == (8, 0), progress
            assert len(calls) == 2 and calls[0] == calls[1] and len(calls[0]) == 8, calls  # the same push, again
            always = client.submit([ImageInput(image=photo_jpeg(i, 96, 64), id=f"always-{i}")
                                    for i in range(2)]).batch_id
            progress = wait_until(client, always, 60)
            reasons = {f.id: f.reason for f in client.failures(always)}
        assert (progress.indexed, progress.failed) == (0, 2), (progress, reasons)
        assert len(calls) == 2 + 4, calls  # sent once and again three times
        assert all("INTERNAL: internal error (request id test) (sent 4 times)" in r for r in reasons.values()), reasons
        assert client.stats().count == 8


@pytest.mark.parametrize("when", ["during the read", "just before the read", "after a reconnect"])
def test_a_stop_ends_the_idle_workers_blocking_read_at_once(when: str, stack: Stack, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle worker waits for jobs in a blocking read of the stream (`block_ms`). A stop (SIGTERM
    sets `stop`) ends that read at once, CLIENT UNBLOCK from the worker's stop watcher, instead of
    waiting it out: here the read blocks for 60 s, and the loop must end within 10 s of the stop. Also
    when the stop comes after the feeder asked its connection's id and before its read reached Redis
    (the watcher's first interrupt finds nothing blocked: it tries again until the feeder is gone), and
    after the reader's connection was dropped during a read (its next read is on a new connection,
    with a new id). Real Redis; the worker loop in this process (it pushes nothing: no server is needed)."""
    argv = [*stack.common(), "--server", f"127.0.0.1:{free_port()}", "--batch-size", "2", "--thumbnail-size", "0"]
    config = dataclasses.replace(WorkerConfig.from_args(settings.parse("worker", argv, "t", "t")), block_ms=60_000)
    worker = Worker(config, load_encoder(config.model, 1))
    r = redislib.Redis.from_url(stack.redis_url)
    stop = threading.Event()
    if when == "just before the read":
        connection_id = jobqueue.connection_id

        def stop_meanwhile(reader: redislib.Redis) -> int:
            got = connection_id(reader)
            stop.set()
            time.sleep(0.5)  # the watcher's first interrupt comes now, before the read
            return got

        monkeypatch.setattr(jobqueue, "connection_id", stop_meanwhile)
    loop = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    loop.start()
    def blocked() -> bool:
        return any(c["id"] == str(worker._reader_id) and c["cmd"] == "xreadgroup" and "b" in c["flags"]
                   for c in r.client_list())

    try:
        if when == "after a reconnect":
            wait_for(blocked, 30, "the worker's blocking read")
            dropped = worker._reader_id
            assert r.client_kill_filter(_id=dropped) == 1
            wait_for(lambda: worker._reader_id != dropped and blocked(), 30, "a read on a new connection")
        if when != "just before the read":
            wait_for(blocked, 30, "the worker's blocking read")
            stop.set()
        assert stop.wait(30)
        loop.join(timeout=10)
        assert not loop.is_alive(), "the stop waited for the blocking read to run out"
    finally:
        stop.set()
        loop.join(timeout=70)
        worker.close()
        r.close()


@pytest.mark.parametrize("denied", ["-client", "-client|unblock"])
def test_a_worker_whose_redis_user_may_not_use_client_commands_still_works(denied: str, stack: Stack,
                                                                         procs: list[Proc], tmp_path: Path) -> None:
    """Where a Redis ACL denies CLIENT ID or CLIENT UNBLOCK (how a stop ends the blocking read), the worker
    still takes and indexes jobs, says once that its reads cannot be interrupted, and still stops on
    SIGTERM (after its read runs out)."""
    r = redislib.Redis.from_url(stack.redis_url)
    user = f"noclient-{os.getpid()}"
    r.acl_setuser(user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", denied])
    try:
        server, address = stack.start_server(tmp_path / "data")
        procs.append(server)
        restricted = stack.redis_url.replace("redis://", f"redis://{user}@", 1)
        worker = stack.start_worker(address, ["--redis-url", restricted, "--batch-size", "4"])
        procs.append(worker)
        with Client(address) as client:
            batch = client.submit([ImageInput(image=photo_jpeg(i, 96, 64), id=f"acl-{i}") for i in range(3)]).batch_id
            assert wait_until(client, batch, 60).indexed == 3
        assert worker.stop() == 0
        assert worker.output().count("cannot be interrupted on stop") == 1, worker.output()
    finally:
        r.acl_deluser(user)
        r.close()


def test_an_image_the_server_refuses_does_not_fail_its_batch(stack: Stack, procs: list[Proc], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """One push carries a whole batch; an image the server refuses (here a thumbnail over its size limit)
    or a vector it would refuse (NaN, as an fp16 overflow gives) fails alone, with its reason, and the
    other images of the batch are indexed. A real server, Redis and worker loop in this process."""
    import numpy as np

    from clipsearch_worker import worker as worker_module

    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    ids = ["a", "b", "big", "c", "d", "e", "f", "g"]
    with Client(address) as client:
        batch = client.submit([ImageInput(image=photo_jpeg(i, 96, 64), id=name) for i, name in enumerate(ids)]).batch_id
        # the worker starts after the submit: the eight images make one batch
        argv = [*stack.common(), "--server", address, "--batch-size", "8", "--decode-threads", "2"]
        config = WorkerConfig.from_args(settings.parse("worker", argv, "t", "t"))
        worker = Worker(config, load_encoder(config.model, 1))
        thumbnail = worker_module._thumbnail
        monkeypatch.setattr(worker_module, "_thumbnail",
                            lambda job, thumb: b"\xff" * 300_000 if job.id == "big" else thumbnail(job, thumb))
        encode = worker.encoder.encode_images
        poisoned: list[int] = []

        def nan_in_the_first_batch(tensors):  # type: ignore[no-untyped-def]
            vectors = np.array(encode(tensors))
            if not poisoned and len(vectors) == 8:
                vectors[3, 5] = np.nan
                poisoned.append(3)
            return vectors

        worker.encoder.encode_images = nan_in_the_first_batch  # type: ignore[method-assign]
        with _running(worker):
            progress = wait_until(client, batch, 60)
            reasons = {f.id: f.reason for f in client.failures(batch)}
            assert poisoned and (progress.indexed, progress.failed) == (6, 2), (progress, reasons)
            assert "limit is 262144" in reasons.pop("big"), reasons
            [(nan_id, nan_reason)] = reasons.items()
            assert nan_id != "big" and "NaN" in nan_reason, reasons
            assert worker_module.reason_kind(nan_reason) == "bad_vector"
            assert client.stats().count == 6
