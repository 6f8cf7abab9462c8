"""Which shard owns an image: the one hash shared by the servers, the router and the store.

An image belongs to shard `shard_of(id, n)` of a collection with n shards. The hash is BLAKE2b of the
id's UTF-8 bytes (first 8 bytes, little-endian, modulo n): stable across processes, machines and
Python versions (unlike `hash()`), and cheap. n is fixed when the collection is created; changing it
means rebuilding every shard from the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import InvalidArgument

__all__ = ["ShardSpec", "shard_of"]

MAX_SHARDS = 1024


def shard_of(image_id: str, n: int) -> int:
    """The shard (0..n-1) that holds the image with this id."""
    if n == 1:
        return 0
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


@dataclass(frozen=True)
class ShardSpec:
    """This server's part of the collection: shard `index` of `count` (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "ShardSpec":
        """'I/N' (0 <= I < N <= MAX_SHARDS); '' means the whole collection (0/1)."""
        if not text:
            return cls()
        try:
            i, n = (int(part) for part in text.split("/"))
        except ValueError as exc:
            raise InvalidArgument(f"--shard must be I/N, e.g. 0/4 (got {text!r})") from exc
        if not 1 <= n <= MAX_SHARDS or not 0 <= i < n:
            raise InvalidArgument(f"--shard I/N needs 0 <= I < N <= {MAX_SHARDS} (got {text!r})")
        return cls(i, n)

    def owns(self, image_id: str) -> bool:
        """Whether this shard holds the image."""
        return self.count == 1 or shard_of(image_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
