"""The start-up heap of a clipsearch program, and the cyclic garbage collector's view of it.

A server or worker makes about 440,000 objects while it imports torch, torchvision, open_clip and faiss
and loads the model, and keeps them until it exits. CPython's collector walks all of them in every full
collection: about six times while they are being made (about 1.6 s of a 13.6 s start with ViT-B-32 on
the 2-core test machine), 0.3-0.6 s in each full collection afterwards, and once more when the process
exits (most of the 2.5-3.2 s from SIGTERM to exit). So a program run as `python -m ...` calls `hold`
before its imports, which keeps the collector off while they run, and `freeze` when they are done,
before it opens a port or starts a thread: that collects once, moves everything left to the collector's
permanent generation (`gc.freeze`), where no collection looks, and turns the collector back on. It
calls `freeze` again once the model is loaded, for the model's objects (frozen objects add up). Objects
that become unreachable later are still freed by their reference counts; only start-up objects caught
in reference cycles would stay, and those live as long as the process anyway. Measured in
docs/BENCHMARKS.md, "Starting and stopping".

A process that never called `hold` (one that imports the server or the worker to run it in its own
process) is left alone: `freeze` does nothing there.
"""

from __future__ import annotations

import gc

__all__ = ["freeze", "hold"]

_held = False


def hold() -> None:
    """Turns the collector off until the next `freeze` (first thing in a program, before its imports)."""
    global _held
    _held = True
    gc.disable()


def freeze() -> int:
    """After `hold`: collects what start-up left behind, keeps the collector off everything that remains
    from now on, and turns it (back) on. Returns how many objects are frozen (0 without `hold`)."""
    if not _held:
        return 0
    gc.collect()
    gc.freeze()
    gc.enable()
    return gc.get_freeze_count()
