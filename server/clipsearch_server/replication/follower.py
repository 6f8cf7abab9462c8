"""A replica's catch-up from the shared PostgreSQL store, and its writes to it.

Owns the applied position of this server, the tailing thread, lag and read-your-writes waits.

- Start-up (`prepare`): binds to the collection in PostgreSQL (refusing other settings), checks that
  the local mirror (a SQLite `SqliteStore` in --data-dir, holding this server's shard only) belongs to that
  collection, and brings the mirror up to the store's head. The collection is then built from the
  mirror as usual (snapshot plus replay, or a full build; app.py first copies a shared snapshot into an
  empty data directory, index/snapshot_share.py), so an empty disk boots from a shared snapshot and the store.
- Tailing (`start`): a thread LISTENs on `pgstore.CHANNEL`; each notification (or every POLL_S, in
  case one was missed) reads the shard's feed after the applied position and applies it through
  `Collection.apply_changes` (mirror and position in one SQLite transaction, then the index). A
  replica killed at any moment restarts from the mirror's recorded position: nothing is lost or
  applied twice.
- Writes go to PostgreSQL and return the head after them (the token); the writing server then waits
  (bounded) until it has applied its own write, so it reads its writes like with SQLite.
- Lag: how long this server has been behind the newest head it knows of (0 when caught up).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

import psycopg
from psycopg_pool import PoolTimeout

from clipsearch_core.errors import FailedPrecondition, Unavailable
from clipsearch_core.shards import ShardSpec
from clipsearch_server.collection.collection import unit_records
from clipsearch_server.storage import fields as typed
from clipsearch_server.storage.postgres import CHANNEL, PgStore
from clipsearch_server.storage.records import ImageRecord
from clipsearch_server.storage.sqlite import SqliteStore

if TYPE_CHECKING:
    from clipsearch_server.collection.collection import Collection

__all__ = ["POLL_S", "StoreFollower"]

log = logging.getLogger(__name__)

POLL_S = 1.0  # the feed is read at least this often, even without a notification
RETRY_S = 1.0  # pause after a database error before reconnecting


class StoreFollower:
    """This server's view of the shared store: applied position, tailing thread and writes."""

    def __init__(self, pg: PgStore, mirror: SqliteStore, shard: ShardSpec) -> None:
        self.pg = pg
        self.mirror = mirror
        self.shard = shard
        self.applied = mirror.applied_position()
        self.head = self.applied
        self._behind_since: float | None = None
        self._collection: Collection | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: psycopg.Connection | None = None

    # --- start-up ------------------------------------------------------------------------------

    def prepare(self, model: str, dim: int, index_kind: str) -> None:
        """Binds to the collection, checks the mirror, and brings the mirror up to the head."""
        self.pg.bind(model, dim, index_kind, self.shard.count)
        owner = self.mirror.get_meta("collection_id")
        if owner is None:
            if self.mirror.count() or self.mirror.next_label():
                raise FailedPrecondition(
                    f"the data directory {self.mirror.path.parent} holds a SQLite collection; a server with a "
                    "PostgreSQL store keeps only a cache there: give it an empty --data-dir")
            self.mirror.set_meta("collection_id", self.pg.collection_id)
            self.mirror.set_meta("shard", str(self.shard))
        elif owner != self.pg.collection_id or self.mirror.get_meta("shard") != str(self.shard):
            raise FailedPrecondition(
                f"the data directory {self.mirror.path.parent} caches another collection or shard "
                f"({self.mirror.get_meta('shard')}); give this server (shard {self.shard}) its own --data-dir")
        started = time.monotonic()
        while self._step():
            pass
        log.info("mirror of shard %s at position %d (%d images) in %.2fs", self.shard, self.applied,
                 self.mirror.count(), time.monotonic() - started)

    def start(self, collection: Collection) -> None:
        """Applies further changes to `collection` (built on the mirror) from a background thread."""
        self._collection = collection
        self._thread = threading.Thread(target=self._run, name="catch-up", daemon=True)
        self._thread.start()

    # --- tailing -------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Applies one batch of the feed; returns whether there may be more."""
        feed = self.pg.feed(self.applied, self.shard)
        self._saw_head(feed.head)
        if 0 < self.applied < feed.forgotten_below:
            raise FailedPrecondition(
                f"the mirror in {self.mirror.path.parent} stopped at position {self.applied}, and deletions made "
                f"since (below {feed.forgotten_below}) are older than the store remembers; applying the feed would "
                "keep those images: restart this server with an empty --data-dir")
        if feed.upto <= self.applied:
            return False
        if self._collection is not None:
            self._collection.apply_changes(feed.changes, feed.upto)
        else:
            self.mirror.apply(feed.changes, feed.upto)
        with self._changed:
            self.applied = feed.upto
            if self.applied >= self.head:
                self._behind_since = None
            self._changed.notify_all()
        return feed.upto < feed.head

    def _saw_head(self, head: int) -> None:
        with self._changed:
            if head > self.head:
                self.head = head
            if self.head > self.applied and self._behind_since is None:
                self._behind_since = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._listener is None:
                    self._listener = psycopg.connect(self.pg.url, autocommit=True)
                    self._listener.execute(f"LISTEN {CHANNEL}")
                while self._step():
                    pass
                for note in self._listener.notifies(timeout=POLL_S, stop_after=1):
                    self._saw_head(int(note.payload))
            except Exception:  # noqa: BLE001 - keep trying: the store may be failing over
                log.exception("catch-up from the store failed; retrying in %.1fs", RETRY_S)
                self._close_listener()
                self._stop.wait(RETRY_S)

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except psycopg.Error:
                pass
            self._listener = None

    # --- reads and writes ----------------------------------------------------------------------

    def lag_s(self) -> float:
        """Seconds this server has been behind the newest head it knows of (0 when caught up)."""
        since = self._behind_since
        return 0.0 if since is None else time.monotonic() - since

    def wait_for(self, position: int, timeout_s: float) -> bool:
        """Waits until every change below `position` is applied here; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.applied < position:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def upsert(self, records: Sequence[ImageRecord]) -> tuple[int, int]:
        """Writes records to the store (durable on return); returns (records written, token)."""
        with _store_unavailable():
            skipped, head = self.pg.upsert(unit_records(records))
        if skipped:
            log.info("skipped %d upserts of images deleted after submission: %s", len(skipped), ", ".join(skipped[:5]))
        self._saw_head(head)
        return len(records) - len(skipped), head

    def update(self, ids: Sequence[str], update: typed.Update) -> tuple[list[str], int]:
        """Updates fields in the store (durable on return); returns (ids updated, token)."""
        with _store_unavailable():
            updated, head = self.pg.update(ids, update)
        self._saw_head(head)
        return updated, head

    def delete(self, ids: Sequence[str]) -> tuple[list[str], int]:
        """Deletes images in the store (durable on return); returns (ids that existed, token)."""
        with _store_unavailable():
            existed, head = self.pg.delete(ids)
        self._saw_head(head)
        return existed, head

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=POLL_S + 5)
        self._close_listener()
        self.pg.close()


@contextmanager
def _store_unavailable() -> Iterator[None]:
    """Connection failures and pool timeouts of the store are transient: UNAVAILABLE, retried."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise Unavailable(f"the PostgreSQL store is unreachable ({exc}); the write was not made, retry") from exc
