"""Redis killed (kill -9) and restarted from its append-only file during ingestion, with a real server
and a real worker left running (default visibility timeout, 300 s): the jobs the worker held are redone
within the heartbeat window, not after the visibility timeout, and the progress counts are exact. Also
when the restarted Redis lost its last writes (an older copy of the AOF, as after a host crash with
appendfsync everysec): jobs finished in the lost seconds are pending again, and are redone and counted
once."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis

from clipsearch import Client
from clipsearch_core import jobqueue
from clipsearch_core.jobqueue import GROUP, Job, Keys
from clipsearch_devkit.data import submit_all, synthetic_inputs, wait_until
from clipsearch_devkit.procs import Proc, Stack, free_port, start_redis, wait_for

pytestmark = pytest.mark.timeout(180)

RECOVERY_S = 40  # after Redis is back: the heartbeat window (<= 30 s) and some slack for 2 shared cores


def start_ingestion(stack: Stack, procs: list[Proc], tmp_path: Path) -> tuple[Proc, Proc, Client, str, int]:
    """Redis (AOF on) on a free port, a server and a worker with the default timeouts, 384 small PNGs
    submitted; returns (redis, worker, client, batch, images) once some are indexed, with the worker paused
    (SIGSTOP: the tiny model indexes hundreds a second, so ingestion could end before Redis is killed)."""
    first, url = start_redis(tmp_path / "logs", port=free_port(), data_dir=tmp_path / "redis", appendonly=True)
    procs.append(first)
    stack.redis_url = url
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    worker = stack.start_worker(address, ["--batch-size", "8"])  # defaults: visibility 300 s, worker ttl 15 s
    procs.append(worker)
    wait_for(lambda: "ready" in worker.output(), 120, "worker", worker.popen)
    client = Client(address)
    inputs = synthetic_inputs(per_class=16, seed=25)  # 384 small PNGs: still going when Redis is killed
    batch = submit_all(client, inputs)
    pause_when(worker, client, batch, 40)
    return first, worker, client, batch, len(inputs)


def pause_when(worker: Proc, client: Client, batch: str, indexed: int, timeout: float = 60) -> None:
    """Polls closely until the batch has `indexed` images indexed, then pauses the worker (SIGSTOP)."""
    deadline = time.monotonic() + timeout
    while client.progress(batch, timeout=5).indexed < indexed:
        assert time.monotonic() < deadline, f"fewer than {indexed} indexed after {timeout}s"
        time.sleep(0.02)
    worker.popen.send_signal(signal.SIGSTOP)


def restart_redis(procs: list[Proc], tmp_path: Path, url: str) -> float:
    """Redis again on the same port and data dir (its AOF); returns when it answered (monotonic)."""
    second, _ = start_redis(tmp_path / "logs", port=urlparse(url).port, data_dir=tmp_path / "redis", appendonly=True)
    procs.insert(0, second)  # stopped last: the worker gives its jobs back on the way out
    return time.monotonic()


def assert_exact_within(stack: Stack, worker: Proc, client: Client, batch: str, images: int, back: float) -> float:
    """Within RECOVERY_S of `back`: nothing pending, every image indexed once in the server, and the
    progress counts (the batch's and the service's) exact. Returns the seconds it took."""
    r, keys = redis.Redis.from_url(stack.redis_url), Keys(stack.prefix)
    try:
        wait_until(client, batch, RECOVERY_S - (time.monotonic() - back), lambda p: p.done)
    except AssertionError as exc:
        held = {c["name"].decode(): int(c["pending"]) for c in r.xinfo_consumers(keys.jobs, GROUP)}
        raise AssertionError(f"{exc}; {client.stats().count} indexed in the server; pending per consumer: "
                             f"{held}\nworker log:\n{worker.output()[-3000:]}") from None
    took = time.monotonic() - back
    assert r.xpending(keys.jobs, GROUP)["pending"] == 0
    assert client.stats().count == images
    for progress in (client.progress(batch), client.progress()):
        assert (progress.submitted, progress.indexed, progress.failed, progress.pending) == (images, images, 0, 0)
    assert worker.popen.poll() is None  # the worker rode out the outage
    print(f"done {took:.1f}s after Redis was back")
    return took


def test_jobs_held_when_redis_is_killed_are_redone_and_counted_once(
    stack: Stack, procs: list[Proc], tmp_path: Path
) -> None:
    first, worker, client, batch, images = start_ingestion(stack, procs, tmp_path)
    first.kill()  # kill -9: no shutdown, the append-only file is what it was at that moment
    at_kill = client.stats().count
    worker.popen.send_signal(signal.SIGCONT)
    time.sleep(2.0)  # an outage of a few seconds: the worker's pushes land, its acknowledgements fail
    back = restart_redis(procs, tmp_path, stack.redis_url)
    assert at_kill < images, "Redis was killed after the ingestion ended; the test proved nothing"
    assert_exact_within(stack, worker, client, batch, images, back)


def test_jobs_finished_in_writes_redis_lost_are_redone_and_counted_once(
    stack: Stack, procs: list[Proc], tmp_path: Path
) -> None:
    first, worker, client, batch, images = start_ingestion(stack, procs, tmp_path)
    aof = tmp_path / "redis" / "appendonlydir"
    older = tmp_path / "aof-older"
    shutil.copytree(aof, older)  # what a host crash would leave: the AOF as of a moment ago
    rolled_back_to = client.progress(batch).indexed  # at most this many finishes are in the copy
    worker.popen.send_signal(signal.SIGCONT)
    pause_when(worker, client, batch, rolled_back_to + 24)  # finishes that will be lost; paused while Redis goes
    try:
        first.kill()
        at_kill = client.stats().count
        shutil.rmtree(aof)
        shutil.copytree(older, aof)
        back = restart_redis(procs, tmp_path, stack.redis_url)
    finally:
        worker.popen.send_signal(signal.SIGCONT)
    assert at_kill < images, "Redis was killed after the ingestion ended; the test proved nothing"
    restored = int(redis.Redis.from_url(stack.redis_url).hget(Keys(stack.prefix).batch(batch), "indexed"))
    lost = at_kill - restored
    assert lost >= 24, f"only {lost} finishes were lost; the test proved nothing"
    assert_exact_within(stack, worker, client, batch, images, back)


def test_release_orphans_gives_back_only_idle_jobs_the_worker_does_not_hold(redis_url: str) -> None:
    r, keys = redis.Redis.from_url(redis_url), Keys("t-release-orphans")
    r.delete(keys.jobs)
    assert jobqueue.release_orphans(r, keys, "w", [], 0) == []  # no stream or group (Redis came back empty)
    jobqueue.ensure_group(r, keys)
    for n in range(4):
        r.xadd(keys.jobs, Job(id=f"img-{n}").to_fields())
    jobs = jobqueue.read_jobs(r, keys, "w", 4, 100)
    held, lost = [jobs[0].entry_id], [job.entry_id for job in jobs[1:]]
    assert jobqueue.release_orphans(r, keys, "w", held, 60_000) == []  # just read: maybe not tracked yet
    time.sleep(0.05)
    assert sorted(jobqueue.release_orphans(r, keys, "w", held, 20)) == sorted(lost)
    owners = {row["message_id"].decode(): row["consumer"].decode()
              for row in r.xpending_range(keys.jobs, GROUP, min="-", max="+", count=10)}
    assert owners == {held[0]: "w", **{entry_id: jobqueue.PARKING for entry_id in lost}}
    taken = jobqueue.take_over_dead(r, keys, "other", 15_000, 10)
    assert sorted(job.entry_id for job in taken) == sorted(lost)
    assert all(job.attempts == 1 for job in taken)  # given back, not a new delivery
