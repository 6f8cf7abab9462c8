"""A batch on its way through the worker's pipeline: `Batch` (jobs taken, their decoding under way) and
`Encoded` (after the model: what to push, and the outcomes already known)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from clipsearch_core.jobqueue import Job

from .decode import Prepared

__all__ = ["Batch", "Encoded"]


@dataclass
class Batch:
    """Jobs taken from the queue, with their decoding under way in chunks (exhausted jobs in none)."""

    jobs: list[Job]
    chunks: list[tuple[list[Job], Future]]
    started: float
    prepared: "list[tuple[Job, Prepared]] | None" = None  # its images ready for the model (`Worker._prepare`)
    error: BaseException | None = None  # what preparing it ahead raised, for the main loop to raise


@dataclass
class Encoded:
    """A batch after the model: the jobs to push with their vectors and thumbnails (bytes, or a Future of
    them when the pool is still encoding a device-scaled one), and the outcomes already known (failed
    images, jobs that gave up)."""

    jobs: list[Job]
    vectors: Any
    thumbs: "list[bytes | None | Future[bytes | None]]"
    outcomes: list[tuple[Job, str | None]]
