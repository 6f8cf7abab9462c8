"""`python -m tests.forkprobe [ARGS]`: prints what a process sees of its start (for tests/test_forkserver.py)."""

import json
import os
import sys

import torch

import clipsearch_core  # noqa: F401 - sets OMP_WAIT_POLICY, as every clipsearch program does first

if __name__ == "__main__":
    print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "probe": os.environ.get("PROBE"),
                      "omp": os.environ.get("OMP_WAIT_POLICY"), "main": sys.modules["__main__"].__spec__.name,
                      "threads": torch.get_num_threads(), "stdin": sys.stdin.read()}), flush=True)
    if "--sleep" in sys.argv:
        import time

        time.sleep(60)
    sys.exit(int(sys.argv[1]))
