"""What the queue carries, as values: a job (`Job`, and its stream-entry format), what a submission
queued (`Submitted`), ingestion counts (`Progress`), a dead-lettered job (`Failure`), and the decoding of
Redis replies (bytes) into them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["FAILED", "INDEXED", "Failure", "Job", "Progress", "Submitted"]

INDEXED = "indexed"  # the outcomes of a finished job, also the names of their counters
FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """One image to encode. `uid` is unique per submission; `id` is the image id (the upsert key)."""

    id: str
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    batch_id: str = ""
    has_blob: bool = False
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    entry_id: str = ""  # the stream entry id, set when read from Redis
    attempts: int = 1  # deliveries so far, set when reclaimed
    # Typed fields as JSON: an object mapping each key to the proto3 JSON of a clipsearch.v1.Value
    # (e.g. {"n": {"int_value": "3"}}); "" = none. Passed through to UpsertVectors unchanged.
    fields_json: str = ""

    def to_fields(self) -> dict[str, str]:
        return {
            "uid": self.uid,
            "id": self.id,
            "uri": self.uri,
            "batch": self.batch_id,
            "meta": json.dumps(self.metadata, separators=(",", ":")),
            "blob": "1" if self.has_blob else "0",
            "fields": self.fields_json,
        }

    def flat_fields(self) -> list[str]:
        """`to_fields` as one flat list (k, v, k, v, ...), as XADD takes them in Lua."""
        return [item for pair in self.to_fields().items() for item in pair]

    @classmethod
    def from_entry(cls, entry_id: bytes | str, raw: Mapping[Any, Any]) -> "Job":
        fields = decoded(raw)
        return cls(
            id=fields.get("id", ""),
            uri=fields.get("uri", ""),
            metadata=json.loads(fields.get("meta") or "{}"),
            batch_id=fields.get("batch", ""),
            has_blob=fields.get("blob") == "1",
            uid=fields.get("uid", ""),
            entry_id=text(entry_id),
            fields_json=fields.get("fields", ""),
        )


@dataclass(frozen=True)
class Submitted:
    """What one submission queued: its batch id and image ids (remembered per request id)."""

    batch_id: str
    ids: list[str]


@dataclass(frozen=True)
class Progress:
    """Ingestion counts; pending = submitted - indexed - failed."""

    submitted: int = 0
    indexed: int = 0
    failed: int = 0

    @property
    def pending(self) -> int:
        return max(0, self.submitted - self.indexed - self.failed)


@dataclass(frozen=True)
class Failure:
    """An image that could not be indexed (an entry of the dead-letter stream)."""

    id: str
    uri: str
    reason: str
    batch_id: str
    failed_at_ms: int
    attempts: int
    entry_id: str
    job: Job

    @classmethod
    def from_entry(cls, entry_id: bytes | str, raw: Mapping[Any, Any]) -> "Failure":
        """A dead-letter entry: the job's fields, its reason and attempts (its entry id's time: when it failed)."""
        fields = decoded(raw)
        job = Job.from_entry("", raw)
        return cls(
            id=job.id,
            uri=job.uri,
            reason=fields.get("reason", ""),
            batch_id=job.batch_id,
            failed_at_ms=int(text(entry_id).split("-")[0]),
            attempts=int(fields.get("attempts", 1)),
            entry_id=text(entry_id),
            job=job,
        )


def text(value: bytes | str) -> str:
    """A Redis reply's bytes as text (replies are bytes: image blobs are binary)."""
    return value.decode() if isinstance(value, bytes) else value


def decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash or stream entry's fields as text."""
    return {text(k): text(v) for k, v in raw.items()}
