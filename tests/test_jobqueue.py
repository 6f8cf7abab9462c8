"""The queue's protocol as an object (`JobQueue`): a job is counted once however often it is finished, every
key it writes is under its prefix (one hash tag), each Lua script names its slots and is given exactly
those, scripts are registered once and survive a Redis that lost them, and the old functions are a
facade over it. Real Redis (the session's)."""

from __future__ import annotations

import re
import time
from typing import Any, Iterator

import pytest
import redis as redislib

from clipsearch_core import jobqueue
from clipsearch_core.jobqueue import GROUP, PARKING, Job, JobQueue, Keys, Progress, WorkerInfo, scripts


@pytest.fixture
def queue(redis_url: str) -> Iterator[JobQueue]:
    q = JobQueue.connect(redis_url, f"t-jobqueue-{time.time_ns()}")
    q.ensure_group()
    yield q
    q.close()


def _jobs(n: int, batch: str = "b") -> list[Job]:
    return [Job(id=f"img-{i}", has_blob=True, batch_id=batch, metadata={"n": str(i)}) for i in range(n)]


def test_submit_read_finish_counts_each_job_once(queue: JobQueue) -> None:
    jobs = _jobs(3)
    submitted = queue.submit(jobs, [b"abc"] * 3, "b", request_id="req-1")
    assert submitted.ids == ["img-0", "img-1", "img-2"]
    assert queue.submit(_jobs(5), [b"x"] * 5, "other", request_id="req-1") == submitted  # a retried call lands once
    assert queue.usage() == (3, 9)
    taken = queue.read("w1", 10, 100)
    assert [job.id for job in taken] == ["img-0", "img-1", "img-2"] and all(job.entry_id for job in taken)
    assert queue.load_blobs(taken) == [b"abc"] * 3
    outcomes = [(taken[0], None), (taken[1], None), (taken[2], "cannot decode image: test")]
    assert queue.finish(outcomes) == 3
    assert queue.finish(outcomes) == 0  # finished already: nothing counts twice
    assert queue.progress("b") == Progress(3, 2, 1) == queue.progress()
    assert queue.progress("unknown") is None
    [failure] = queue.failures("b")
    assert (failure.id, failure.reason, failure.job.metadata) == ("img-2", "cannot decode image: test", {"n": "2"})
    assert queue.usage() == (0, 0)
    assert queue.retry([failure]) == (["img-2"], [])
    assert queue.progress("b") == Progress(3, 2, 0) and queue.failures("b") == []
    [again] = queue.read("w1", 10, 100)
    assert queue.finish([(again, None)]) == 1
    assert queue.progress("b") == Progress(3, 3, 0)
    status = queue.status()
    assert (status.jobs, status.in_flight, status.lag, status.queued_bytes) == (0, 0, 0, 0)


def test_every_key_is_under_the_prefix(redis_url: str) -> None:
    """A whole life of jobs (submit with a request id, read, transient errors, a failure, a retry,
    heartbeats, take-over, release) writes only keys under `{prefix}:`, in a database of its own."""
    url = redis_url.rsplit("/", 1)[0] + "/9"
    r = redislib.Redis.from_url(url)
    r.flushdb()
    queue = JobQueue(jobqueue.connect(url), Keys("layout"))
    try:
        queue.ensure_group()
        queue.submit(_jobs(4), [b"x", None, b"yy", b"z"], "b", request_id="r")
        taken = queue.read("w1", 4, 100)
        queue.record_transient_errors([(taken[0], "cannot fetch: timeout")])
        queue.keep_alive("w1", [taken[0].entry_id])
        queue.finish([(taken[1], None), (taken[2], "cannot decode image: test")])
        queue.retry(queue.failures())
        queue.report_worker(WorkerInfo("w1", 0, 1, "cpu", "m"))
        assert queue.release("w1") == 2
        assert len(queue.take_over_dead("w2", 60_000, 10)) == 2
        queue.release_orphans("w2", [], 0)
        queue.status()
        names = sorted(key.decode() for key in r.scan_iter(count=1000))
        assert names and all(name.startswith("{layout}:") for name in names), names
        assert {"{layout}:jobs", "{layout}:progress", "{layout}:failures", "{layout}:queued-bytes",
                "{layout}:workers", "{layout}:last-error", "{layout}:batch:b", "{layout}:request:r"} <= set(names)
    finally:
        r.flushdb()
        r.close()
        queue.close()


_SCRIPTS = {"_FINISH", "_RETRY", "_TAKE_OVER", "_RELEASE", "_RELEASE_ORPHANS"}


def _named_slots(text: str, table: str) -> list[int]:
    """The numbered slots of KEYS or ARGV that a script names (`local name = KEYS[n]`, or a value made from
    one slot: `local count = tonumber(ARGV[5])`) before its first blank line."""
    header = text.strip().split("\n\n")[0]
    return [int(n) for n in re.findall(rf"^local \w+ = [^\n\[]*{table}\[(\d+)\][^\[\n]*$", header, re.M)]


@pytest.mark.parametrize("name", sorted(_SCRIPTS))
def test_each_script_names_its_slots_before_using_them(name: str) -> None:
    text = getattr(scripts, name)
    for table in ("KEYS", "ARGV"):
        named = _named_slots(text, table)
        assert named == list(range(1, len(named) + 1)), (name, table, named)
        used = {int(n) for n in re.findall(rf"{table}\[(\d+)\]", text)}
        assert used == set(named), f"{name} uses {table} slots it does not name first: {sorted(used - set(named))}"
    assert _named_slots(text, "KEYS"), name  # every script names at least one key


def test_scripts_are_given_exactly_the_slots_they_name(queue: JobQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `Scripts` method passes the keys its script names (plus, for FINISH, two per job), all under
    the queue's hash tag (one Redis Cluster slot), and at least the ARGV slots it names."""
    calls: dict[str, tuple[list[Any], list[Any]]] = {}

    def recording(name: str):  # type: ignore[no-untyped-def]
        def call(keys: list[Any], args: list[Any], client: Any = None) -> Any:
            calls[name] = (list(keys), list(args))
            return 0 if name in ("_RELEASE", "_RETRY", "_FINISH") else []
        return call

    for name in _SCRIPTS:
        monkeypatch.setattr(queue.scripts, name.lower(), recording(name))
    job = Job(id="a", has_blob=True, batch_id="b", entry_id="1-0")
    pipe = queue.redis.pipeline(transaction=False)
    queue.scripts.finish(pipe, [(job, None), (job, "failed: test")])
    queue.retry([jobqueue.Failure("a", "", "r", "b", 1, 1, "1-0", job)])
    queue.release("w")
    queue.release_orphans("w", ["1-0"], 10)
    queue.scripts.take_over(dead="d", taker="t", seen_record=b"", count=1, is_delivery=True)
    assert set(calls) == _SCRIPTS
    for name, (keys, args) in calls.items():
        text = getattr(scripts, name)
        extra = 2 * 2 if name == "_FINISH" else 0  # two jobs: each its batch hash and its blob
        assert len(keys) == len(_named_slots(text, "KEYS")) + extra, (name, keys)
        assert all(key.startswith(f"{{{queue.keys.prefix}}}:") for key in keys), (name, keys)
        assert len(args) >= len(_named_slots(text, "ARGV")), (name, args)
        assert GROUP in args or name == "_RETRY", (name, args)


def test_scripts_are_registered_once_and_reloaded_when_redis_lost_them(queue: JobQueue,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch_core.jobqueue.scripts import Scripts

    made: list[object] = []  # Scripts built from here on: none, the queue's own serve every call
    register = Scripts.__init__
    monkeypatch.setattr(Scripts, "__init__", lambda self, *a, **kw: (made.append(self), register(self, *a, **kw))[1])
    queue.submit(_jobs(2), [b"x", b"y"], "b")
    first, second = queue.read("w", 2, 100)
    assert queue.finish([(first, None)]) == 1
    queue.redis.script_flush()  # as after a Redis restart
    assert queue.finish([(second, None)]) == 1  # a pipeline loads what it runs
    assert queue.release("w") == 0 and queue.release_orphans("w", [], 0) == []  # a direct call loads on NOSCRIPT
    assert made == [] and queue.progress("b") == Progress(2, 2, 0)


def test_a_released_job_is_taken_over_with_its_delivery_count(queue: JobQueue) -> None:
    queue.submit(_jobs(2), [b"x", b"y"], "b")
    taken = queue.read("w1", 2, 100)
    queue.report_worker(WorkerInfo("w1", 0))
    assert queue.release("w1") == 2
    assert {c["name"]: c["pending"] for c in queue.redis.xinfo_consumers(queue.keys.jobs, GROUP)} == {
        PARKING.encode(): 2}
    again = queue.take_over_dead("w2", 60_000, 10)
    assert sorted(j.entry_id for j in again) == sorted(j.entry_id for j in taken)
    assert all(j.attempts == 1 for j in again)  # a released job's delivery does not count again
    assert queue.finish([(job, None) for job in again]) == 2


def test_the_functions_are_a_facade_over_the_object(redis_url: str) -> None:
    r = jobqueue.connect(redis_url)
    keys = Keys(f"t-facade-{time.time_ns()}")
    jobqueue.ensure_group(r, keys)
    jobqueue.submit(r, keys, _jobs(2), [b"x", b"y"], "b", "req")
    assert JobQueue(r, keys).find_request("req") == jobqueue.find_request(r, keys, "req")
    taken = jobqueue.read_jobs(r, keys, "w", 2, 100)
    assert JobQueue(r, keys).finish([(taken[0], None)]) == 1
    assert jobqueue.finish(r, keys, [(job, None) for job in taken]) == 1
    assert jobqueue.get_progress(r, keys, "b") == JobQueue(r, keys).progress("b") == Progress(2, 2, 0)
    assert jobqueue.status(r, keys) == JobQueue(r, keys).status()
    r.close()
