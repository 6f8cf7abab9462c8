"""OpenMP's wait policy: clipsearch processes make idle OpenMP threads sleep unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = "import clipsearch_core, os; print(os.environ['OMP_WAIT_POLICY'])"


def policy(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_openmp_threads_sleep_when_idle_unless_the_environment_says_otherwise() -> None:
    assert policy({}) == "PASSIVE"  # set on import, before torch loads its OpenMP runtime
    assert policy({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the operator's choice wins
