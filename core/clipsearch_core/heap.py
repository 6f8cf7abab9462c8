"""The start-up heap of a clipsearch process, and the cyclic garbage collector's view of it.

A server or worker holds about 400,000 objects that it made while importing torch, torchvision,
open_clip and faiss and loading the model, and keeps them until it exits. CPython's collector walks all
of them in every full collection (0.44 s on the 2-core test machine) and once more when the process
exits (2.1 s of a worker's 2.6 s from SIGTERM to exit, measured with py-spy). `freeze`, called once
the process is loaded and warmed up, moves them to the collector's permanent generation (`gc.freeze`),
which it never walks: a full collection then costs only what the process made since, and a process
stops in a fraction of a second (docs/BENCHMARKS.md, "Stopping"). Objects that become unreachable later
are still freed by their reference counts; only start-up objects in reference cycles would stay, and
those live as long as the process anyway.
"""

from __future__ import annotations

import gc

__all__ = ["freeze"]


def freeze() -> int:
    """Collects what start-up left behind, then keeps the collector off everything that remains;
    returns how many objects are now frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
