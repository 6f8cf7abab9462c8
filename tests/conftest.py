"""Shared fixtures: a real Redis per session, the tiny OpenCLIP model, and process cleanup."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from clipsearch_devkit.procs import REPO, Proc, Stack, start_redis, stop_fork_server, use_fork_server
from clipsearch_devkit.tinyclip import MODEL_DIR


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """`local-dir:` spec of the tiny OpenCLIP model, trained by clipsearch_devkit/tinyclip/train.py if missing
    ($CLIPSEARCH_TEST_MODEL overrides it with another model spec)."""
    if os.environ.get("CLIPSEARCH_TEST_MODEL"):
        return os.environ["CLIPSEARCH_TEST_MODEL"]
    if not (MODEL_DIR / "open_clip_model.safetensors").exists():
        lock = REPO / ".cache" / "tinyclip.lock"
        lock.parent.mkdir(exist_ok=True)
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            if not (MODEL_DIR / "open_clip_model.safetensors").exists():
                subprocess.run([sys.executable, "-m", "clipsearch_devkit.tinyclip.train", "--out", str(MODEL_DIR)],
                               cwd=REPO, check=True, timeout=600)
    return f"local-dir:{MODEL_DIR}"


@pytest.fixture(scope="session", autouse=True)
def _fork_server() -> Iterator[None]:
    """Servers and workers are forked from a fork server that has imported torch, open_clip and faiss
    once (clipsearch_devkit/forkserver.py); CLIPSEARCH_TEST_FORK=0 execs each one instead."""
    use_fork_server(os.environ.get("CLIPSEARCH_TEST_FORK", "1") != "0")
    yield
    stop_fork_server()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port for this test session."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.stop()


@pytest.fixture
def stack(tiny_model: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Server/worker launcher for one test, on its own Redis key prefix; kills what the test left running."""
    prefix = "t-" + request.node.name.replace("[", "-").replace("]", "")[:60]
    st = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp_path / "logs", prefix=prefix)
    yield st


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """A list the test appends its processes to; all are stopped at the end, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout=10)
