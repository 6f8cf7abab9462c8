"""Pushing vectors to the search server: one UpsertVectors call per batch (`Pusher.send`) with its retry
rules, and the split of a refused push into halves so that only the images the server refuses fail
(`Pusher.push`). Which refusals stop the worker (`WorkerFatal`), which are retried until the server
answers (`_RETRYABLE`), which are sent again a few times (`_RETRIED_REFUSALS`), and which fail the images."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Sequence

import grpc
import numpy as np
from google.protobuf import json_format

from clipsearch.v1 import index_service_pb2 as index_pb, index_service_pb2_grpc as index_grpc, types_pb2
from clipsearch_core.jobqueue import Job

__all__ = ["Pusher", "WorkerFatal"]

log = logging.getLogger(__name__)

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
# Refusals that are not about a record and may pass when the push is sent again (an unexpected error in
# the server, a stream reset or cancelled on the way): sent again up to _REFUSAL_RETRIES times (upserts are
# idempotent) before every image of the push fails. One such error once failed a whole batch of 256.
_RETRIED_REFUSALS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
                     grpc.StatusCode.ABORTED)
_REFUSAL_RETRIES = 3
# Refusals that say the worker is misconfigured (another model, a wrong token): it stops, not failing every job.
_FATAL = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_STOPPED = "stopped"  # send's result when the worker stops before the server answered


class WorkerFatal(Exception):
    """The worker cannot do useful work (e.g. its model differs from the server's); it should exit."""


def _typed_fields(text: str) -> dict[str, types_pb2.Value]:
    """A job's typed fields (proto3 JSON of each Value, as the server queued them) as protobuf."""
    if not text:
        return {}
    return {key: json_format.ParseDict(item, types_pb2.Value()) for key, item in json.loads(text).items()}


class Pusher:
    """Sends vectors with their thumbnails to the server's IndexService.

    `abort`: set when the worker's loop fails; a push retrying against an unreachable server then gives up."""

    def __init__(self, index: index_grpc.IndexServiceStub, metadata: Any, model: types_pb2.ModelInfo, *,
                 mime_type: str, timeout_s: float, abort: threading.Event) -> None:
        self.index = index
        self._metadata = metadata
        self._model = model
        self._mime_type = mime_type
        self._timeout_s = timeout_s
        self._abort = abort

    def push(self, jobs: Sequence[Job], vectors: np.ndarray, thumbs: Sequence[bytes | None],
             stop: threading.Event) -> list[str | None] | None:
        """Upserts vectors (with thumbnails) on the server. Returns each job's failure reason (None:
        indexed), or None if interrupted (`stop`, or the main loop failing: `abort`). A push the server
        refuses as INVALID_ARGUMENT (a record it will not take) is split in halves and each pushed again,
        so that only the images it refuses fail, not their neighbours in the batch: 1 + 2 log2(n) calls
        for one bad image (upserts are idempotent: a half pushed before an interruption is pushed again).
        Other refusals are not about one record: INTERNAL, UNKNOWN, CANCELLED and ABORTED are sent again
        a few times (`send`), then the whole push fails, as do the rest at once."""
        if stop.is_set() or self._abort.is_set():
            return None
        refused = self.send(jobs, vectors, thumbs, stop)
        if isinstance(refused, str):  # _STOPPED
            return None
        if refused is None:
            return [None] * len(jobs)
        code, reason = refused
        if code != grpc.StatusCode.INVALID_ARGUMENT or len(jobs) == 1:
            return [reason] * len(jobs)
        log.info("the server refused a push of %d images (%s); pushing its halves apart", len(jobs), reason)
        half = len(jobs) // 2
        first = self.push(jobs[:half], vectors[:half], thumbs[:half], stop)
        second = None if first is None else self.push(jobs[half:], vectors[half:], thumbs[half:], stop)
        return None if first is None or second is None else [*first, *second]

    def send(self, jobs: Sequence[Job], vectors: np.ndarray, thumbs: Sequence[bytes | None],
             stop: threading.Event) -> "tuple[grpc.StatusCode, str] | str | None":
        """One UpsertVectors call, retried while the server is unavailable or busy, and up to
        _REFUSAL_RETRIES times after a refusal that may pass (_RETRIED_REFUSALS). Returns None on
        success, _STOPPED if interrupted, or the status and reason of the server's refusal.
        Raises WorkerFatal when the server refuses this worker (_FATAL)."""
        mime = self._mime_type
        request = index_pb.UpsertVectorsRequest(
            model=self._model,
            records=[
                index_pb.VectorRecord(id=job.id, vector=vec.astype("<f4").tobytes(), uri=job.uri, metadata=job.metadata,
                                      # the stream entry id's ms: the submission time
                                      submitted_at_ms=int(job.entry_id.split("-")[0] or 0),
                                      fields=_typed_fields(job.fields_json),
                                      thumbnail=types_pb2.Thumbnail(data=thumb, mime_type=mime) if thumb else None)
                for job, vec, thumb in zip(jobs, vectors, thumbs)
            ],
        )
        delay, refusals = 0.2, 0
        while True:
            try:
                self.index.UpsertVectors(request, timeout=self._timeout_s, metadata=self._metadata)
                return None
            except grpc.RpcError as exc:
                code = exc.code()
                if code in _FATAL:  # misconfigured: stop, do not fail every job
                    raise WorkerFatal(f"{code.name}: {exc.details()}") from exc
                if code in _RETRIED_REFUSALS and refusals < _REFUSAL_RETRIES:
                    refusals += 1
                    log.warning("push of %d images refused (%s: %s); sending it again in %.1fs (%d of %d)",
                                len(jobs), code.name, exc.details(), delay, refusals, _REFUSAL_RETRIES)
                elif code not in _RETRYABLE:
                    tries = f" (sent {refusals + 1} times)" if refusals else ""
                    return code, f"the server refused the vector: {code.name}: {exc.details()}{tries}"
                else:
                    log.warning("push failed (%s: %s); retrying in %.1fs", code.name, exc.details(), delay)
            if stop.wait(delay) or self._abort.is_set():
                return _STOPPED
            delay = min(delay * 2, 5.0)
