"""Index snapshots shared between the replicas of a shard: a directory (a shared volume) or an
S3-compatible bucket (`s3://bucket/prefix`, through boto3; the endpoint comes from boto3's usual
settings, e.g. AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID).

Layout, under the location: `<collection id>/shard-<I>-of-<N>/index-<L>.faiss` plus `snapshot.json`
(the same pointer as in a data directory, snapshots.py). The collection id (storage/postgres.py) keeps a
recreated database from ever loading an older collection's graph. A publish (a no-op when the share
already points at this snapshot) writes the file first and then the pointer (each atomic: rename in a
directory, one PUT in S3) and keeps the previous file for replicas copying it now; a fetch copies the
pointer's file into an empty data directory, then the pointer. A snapshot of one replica fits every
replica of the shard: labels come from the shared store.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Protocol

from clipsearch_core.shards import ShardSpec

from .files import write_text_durably
from .snapshots import SNAPSHOT_POINTER

__all__ = ["DirectoryShare", "S3Share", "SnapshotShare", "share_for"]

log = logging.getLogger(__name__)


class SnapshotShare(Protocol):
    """Where one shard's snapshots are shared."""

    def publish(self, data_dir: Path) -> str | None: ...
    def fetch(self, data_dir: Path) -> bool: ...


def share_for(location: str, collection_id: str, shard: ShardSpec) -> SnapshotShare:
    """The share at a directory path or an s3://bucket/prefix URL, for this collection and shard."""
    sub = f"{collection_id}/shard-{shard.index}-of-{shard.count}"
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        return S3Share(bucket, "/".join(p for p in (prefix.strip("/"), sub) if p))
    return DirectoryShare(Path(location) / sub)


def _pointer(data_dir: Path) -> dict | None:
    try:
        info = json.loads((data_dir / SNAPSHOT_POINTER).read_text())
        return info if isinstance(info, dict) and "file" in info else None
    except (OSError, ValueError):
        return None


def _install(data_dir: Path, info: dict, copy_to: Callable[[Path], object]) -> None:
    """Copies the snapshot file into data_dir (temp file, rename), then writes the pointer."""
    data_dir.mkdir(parents=True, exist_ok=True)
    name = str(info["file"])
    tmp = data_dir / f".{name}.tmp"
    copy_to(tmp)
    tmp.replace(data_dir / name)
    write_text_durably(data_dir / SNAPSHOT_POINTER, json.dumps(info))
    log.info("copied the shared snapshot %s (labels below %s)", name, info.get("covers_labels_below"))


class DirectoryShare:
    """Snapshots in a directory (a volume every replica mounts)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def publish(self, data_dir: Path) -> str | None:
        info = _pointer(data_dir)
        if info is None:
            return None
        name = str(info["file"])
        previous = _pointer(self.root)
        if previous == info:
            return name  # already published
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / name).exists():
            tmp = self.root / f".{name}.tmp"
            shutil.copyfile(data_dir / name, tmp)
            tmp.replace(self.root / name)
        write_text_durably(self.root / SNAPSHOT_POINTER, json.dumps(info))
        keep = {name, str(previous["file"]) if previous else name}
        for old in self.root.glob("index-*.faiss"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return name

    def fetch(self, data_dir: Path) -> bool:
        info = _pointer(self.root)
        if info is None or _pointer(data_dir) is not None:
            return False
        _install(data_dir, info, lambda tmp: shutil.copyfile(self.root / str(info["file"]), tmp))
        return True


class S3Share:
    """Snapshots in an S3-compatible bucket."""

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3  # only servers configured with an s3:// share need it

        self.bucket, self.prefix = bucket, prefix
        self.s3 = boto3.client("s3")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _remote_pointer(self) -> dict | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(SNAPSHOT_POINTER))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        info = json.loads(body)
        return info if isinstance(info, dict) and "file" in info else None

    def publish(self, data_dir: Path) -> str | None:
        info = _pointer(data_dir)
        if info is None:
            return None
        name = str(info["file"])
        previous = self._remote_pointer()
        if previous == info:
            return name  # already published
        if previous is None or previous["file"] != name:
            self.s3.upload_file(str(data_dir / name), self.bucket, self._key(name))
        self.s3.put_object(Bucket=self.bucket, Key=self._key(SNAPSHOT_POINTER), Body=json.dumps(info).encode())
        keep = {self._key(name), self._key(str(previous["file"]) if previous else name), self._key(SNAPSHOT_POINTER)}
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + "/").get("Contents", [])
        for obj in listed:
            if obj["Key"] not in keep:
                self.s3.delete_object(Bucket=self.bucket, Key=obj["Key"])
        return name

    def fetch(self, data_dir: Path) -> bool:
        info = self._remote_pointer()
        if info is None or _pointer(data_dir) is not None:
            return False
        _install(data_dir, info, lambda tmp: self.s3.download_file(self.bucket, self._key(str(info["file"])), str(tmp)))
        return True
