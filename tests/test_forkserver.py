"""The fork server that the suite starts its servers and workers from (clipsearch_devkit.forkserver) must give a
child what exec gives it: its argv, environment, working directory, `__main__`, standard input, exit
code, its own pid for signals, and OpenMP's wait policy set before torch loaded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipsearch_devkit.procs import REPO, _child_env, fork_server, wait_for

pytestmark = pytest.mark.timeout(180)


def test_a_forked_child_sees_what_an_exec_d_one_sees(tmp_path: Path) -> None:
    env = {**_child_env(None), "PROBE": "forked or not"}
    args = ["3", "two words"]
    child = fork_server().fork("tests.forkprobe", args, env, REPO, tmp_path / "forked.log")
    assert child.wait(timeout=60) == 3
    forked = json.loads((tmp_path / "forked.log").read_text())
    execd = subprocess.run([sys.executable, "-m", "tests.forkprobe", *args], env=env, cwd=REPO,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert execd.returncode == 3, execd.stderr
    assert forked == json.loads(execd.stdout)
    assert forked["probe"] == "forked or not" and forked["omp"] == "PASSIVE"
    assert forked["argv"][1:] == args and forked["main"] == "tests.forkprobe"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_ends_a_forked_child_as_it_ends_an_exec_d_one(tmp_path: Path, sig: int) -> None:
    log = tmp_path / "forked.log"
    child = fork_server().fork("tests.forkprobe", ["0", "--sleep"], _child_env(None), REPO, log)
    wait_for(lambda: log.exists() and log.read_text().strip() != "", 60, "the probe", child)  # type: ignore[arg-type]
    assert child.poll() is None
    child.send_signal(sig)
    assert child.wait(timeout=30) == -sig  # Popen's convention
    assert child.poll() == -sig
