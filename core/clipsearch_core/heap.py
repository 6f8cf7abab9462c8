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
bench/bench_stop.py (docs/performance.md).

A process that never called `hold` (one that imports the server or the worker to run it in its own
process) is left alone: `freeze` does nothing there.

`return_large_blocks` is about the C heap: glibc's malloc serves a block below its mmap threshold from
a per-thread arena and keeps it there once freed, and the threshold rises (up to 32 MB) as large blocks
are freed. A decoded image is made of 16 MB blocks (PIL's), so each decode thread kept its own last
image: 4 threads that decoded 8000 x 8000 PNGs one after another (images.DecodeBudget) still held
1.9 GB, against 0.73 GB for one (bench/bench_image_memory.py). With a fixed threshold of 1 MiB, every
block from 1 MiB up is mapped on its own and given back to the system when freed: the process's peak is
what it uses at once. The cost: every allocation from 1 MiB up is a fresh mapping, faulted in page by
page when first written (a review measured 0.45 ms to allocate and touch 2 MB, against 3 us from the
heap; tens of ms for a 150 MB batch tensor, against seconds for the model; no measurable change on a
768-wide transformer layer or a faiss flat search of 200k x 512).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

__all__ = ["freeze", "hold", "return_large_blocks"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = 1 << 20

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


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """With glibc: C heap blocks of `threshold` bytes and more are mapped on their own and returned to the
    system when freed (see the module docstring). Returns whether the setting took (False elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): its own policy stays
        log.debug("mallopt unavailable; the C heap keeps its own policy")
        return False
