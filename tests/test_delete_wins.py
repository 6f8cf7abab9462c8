"""A delete wins over every job submitted before it (real Redis, server and worker processes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clipsearch import Client, NotFoundError
from clipsearch_devkit.data import submit_all, synthetic_inputs, wait_until
from clipsearch_devkit.procs import Proc, Stack, wait_for

pytestmark = pytest.mark.timeout(240)


def test_queued_image_deleted_before_encoding_stays_deleted(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    client = Client(address, timeout=30)
    inputs = synthetic_inputs(per_class=1, seed=3)[:3]  # img-0, img-1, img-2
    first = submit_all(client, inputs)
    assert client.delete(["img-1"]) == ([], ["img-1"])  # not indexed yet: its job is still queued
    time.sleep(0.01)  # the next submission is strictly later than the delete (ms clock)

    worker = stack.start_worker(address, ["--batch-size", "4"])
    procs.append(worker)
    wait_for(lambda: "ready" in worker.output(), 120, "worker", worker.popen)
    wait_until(client, first, 120)
    assert client.stats().count == 2
    assert len(client.image_search(id="img-0", k=1)) == 1
    with pytest.raises(NotFoundError):
        client.image_search(id="img-1", k=1)  # the job submitted before the delete did not undo it

    again = submit_all(client, [inputs[1]])  # submitted after the delete: indexed
    wait_until(client, again, 120)
    assert client.stats().count == 3
    assert len(client.image_search(id="img-1", k=1)) == 1
    assert server.popen.poll() is None and worker.popen.poll() is None
    client.close()
