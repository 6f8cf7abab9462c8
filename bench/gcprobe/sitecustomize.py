"""A garbage-collection probe for any Python process: with this folder on PYTHONPATH, the process counts
its collections per generation and the time they took, and at exit writes one line to
$GCPROBE_DIR/gc-<pid>.txt (default /tmp). Used with bench_feed.py's per-run environment, e.g.
`--runs "path:0 PYTHONPATH=bench/gcprobe"` (bench/bench_stop.py; docs/benchmarks-journal.md)."""

import atexit
import gc
import os
import sys
import time

_counts = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
_started = [0.0]


def _callback(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        entry = _counts[info["generation"]]
        entry[0] += 1
        entry[1] += time.perf_counter() - _started[0]


def _report() -> None:
    path = os.path.join(os.environ.get("GCPROBE_DIR", "/tmp"), f"gc-{os.getpid()}.txt")
    with open(path, "w") as out:
        out.write(f"{sys.argv[0]} " + " ".join(f"gen{g}: {n} in {t:.3f}s" for g, (n, t) in _counts.items()) + "\n")


gc.callbacks.append(_callback)
atexit.register(_report)
