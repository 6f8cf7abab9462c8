"""PostgreSQL as the shared source of truth of a collection served by several search servers.

Owns the database schema, the collection's identity (model, dimension, index kind, shard count: a
server with other settings refuses to start), the writes, and the change feed replicas tail.

Positions. Every write takes consecutive positions from `meta.next_position` while holding a
transaction-level advisory lock (`pg_advisory_xact_lock(WRITE_LOCK)`), so writers are serialized
and commit in position order: a reader that sees position p committed has also seen every position
below p (the classic trap, a sequence value taken by a transaction that commits late and is skipped
by a tailer already past it, cannot happen). Each upserted record gets its own position and, when its
vector changed, that position as its label (labels are unique and only grow, as with SQLite); each
deleted id gets a position in `deletions`. The feed of a shard is the rows of `images` and
`deletions` of that shard with position in [after, head), read in one REPEATABLE READ snapshot.
Writes end with NOTIFY on `CHANNEL` (payload: the new head), delivered at commit, which wakes the
replicas (replication/follower.py). A write's token is the head after it: a replica that has applied every
position below the token has applied the write.

Deletes win over earlier submissions exactly as in the SQLite store (sqlite.py): `deletions` keeps
each deleted id's time and an upsert of an image submitted at or before it is skipped. Field updates
(`Writer.update`) win the same way: each updated image takes a new position (its label stays, so replicas
re-apply its row without touching their index) and images.fields_ms records when; an upsert of an image
submitted at or before it keeps the stored fields and metadata.

Thumbnails (made by the workers) live in their own table keyed by image id, as in SQLite: an upsert
sets or removes the image's thumbnail, a delete removes it. They travel in the feed with their image's
row (a thumbnail only changes with an upsert, which gives the row a new position), so each replica's
mirror serves GetThumbnails for its shard.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool

from clipsearch_core.errors import FailedPrecondition, Unavailable
from clipsearch_core.shards import ShardSpec, shard_of

from . import fields as typed
from .records import DELETION_MEMORY_MS, Change, ImageRecord

__all__ = ["CHANNEL", "Feed", "PgStore", "WRITE_LOCK", "Writer"]

CHANNEL = "clipsearch_changes"
WRITE_LOCK = 0x636C6970  # advisory lock key of the writers ("clip")
SCHEMA_LOCK = 0x636C6971  # advisory lock key of schema creation and collection binding

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id text PRIMARY KEY,
    label bigint NOT NULL UNIQUE,
    shard integer NOT NULL,
    position bigint NOT NULL,
    uri text NOT NULL,
    metadata text NOT NULL,
    fields text NOT NULL,
    vector bytea NOT NULL,
    updated_ms bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS images_feed ON images (shard, position);
CREATE TABLE IF NOT EXISTS deletions (
    id text PRIMARY KEY,
    shard integer NOT NULL,
    position bigint NOT NULL,
    deleted_at_ms bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS deletions_feed ON deletions (shard, position);
CREATE TABLE IF NOT EXISTS thumbnails (id text PRIMARY KEY, mime_type text NOT NULL, data bytea NOT NULL);
ALTER TABLE images ADD COLUMN IF NOT EXISTS fields_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN IF NOT EXISTS submitted_ms bigint NOT NULL DEFAULT 0;
INSERT INTO meta(key, value) VALUES ('next_position', '1') ON CONFLICT (key) DO NOTHING;
"""


@dataclass(frozen=True)
class Feed:
    """Changes of one shard in position order, and `upto`: every position below it is covered."""

    changes: list[Change]
    upto: int
    head: int  # the latest committed head seen in the same snapshot
    forgotten_below: int = 0  # deletions below this position were purged from the feed (DELETION_MEMORY_MS)


class PgStore:
    """The shared store: a small connection pool; every method is one short transaction."""

    def __init__(self, url: str, pool_size: int = 4, timeout_s: float = 10.0) -> None:
        self.url = url
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, timeout=timeout_s, open=False,
                                   kwargs={"autocommit": False})
        try:
            self.pool.open(wait=True, timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - psycopg_pool raises its own timeout error
            self.pool.close()
            raise Unavailable(f"cannot connect to the PostgreSQL store ({_redacted(url)}): {exc}") from exc
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(_SCHEMA)
            # the stored fields' format: recorded in a database that has none (new, or written before the
            # format was recorded: those hold version 1); another one is refused
            conn.execute("INSERT INTO meta(key, value) VALUES ('fields_format', %s) ON CONFLICT (key) DO NOTHING",
                         (typed.FIELDS_FORMAT,))
            stored: dict[str, str] = dict(conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('shards', 'collection_id', 'fields_format')").fetchall())
        if stored["fields_format"] != typed.FIELDS_FORMAT:
            self.pool.close()
            raise FailedPrecondition(f"the PostgreSQL store {_redacted(url)} holds typed fields in format "
                                     f"{stored['fields_format']!r}; this server reads format {typed.FIELDS_FORMAT!r}: "
                                     "run the version that wrote it")
        self.shards = int(stored.get("shards", 1))  # bind() checks it against this server's --shard
        self.collection_id = stored.get("collection_id", "")

    # --- identity ------------------------------------------------------------------------------

    def bind(self, model: str, dim: int, index_kind: str, shards: int) -> None:
        """Records the collection's settings on first use; refuses a server whose settings differ."""
        wanted = {"model": model, "dim": str(dim), "index_kind": index_kind, "shards": str(shards)}
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            stored: dict[str, str] = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "model" not in stored:
                rows = [*wanted.items(), ("collection_id", uuid.uuid4().hex)]
                conn.cursor().executemany("INSERT INTO meta(key, value) VALUES (%s, %s)", rows)
                stored.update(rows)
        differ = [f"{key} {stored.get(key)!r} (this server: {value!r})"
                  for key, value in wanted.items() if stored.get(key) != value]
        if differ:
            raise FailedPrecondition(
                f"the collection in {_redacted(self.url)} was created with other settings: {'; '.join(differ)}. "
                "Start this server with the collection's settings (model, --hnsw-m/index kind, --shard I/N), or use "
                "another database; changing the shard count or the model means rebuilding the collection.")
        self.shards = shards
        self.collection_id = stored["collection_id"]

    # --- writes --------------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator["Writer"]:
        """One write transaction holding the writers' lock; on leaving it, the head advances past the
        positions the writer took and replicas are notified (at commit)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            position = int(_scalar(conn, "SELECT value FROM meta WHERE key = 'next_position'"))
            writer = Writer(conn, position, self.shards)
            yield writer
            conn.execute("UPDATE meta SET value = %s WHERE key = 'next_position'", (str(writer.position),))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(writer.position)))

    def upsert(self, records: Sequence[ImageRecord]) -> tuple[list[str], int]:
        """Writes records (unit vectors) in one transaction; returns (ids skipped because their image
        was deleted after submission, the head position after the write)."""
        with self.writing() as writer:
            skipped = writer.upsert(records)
        return skipped, writer.position

    def update(self, ids: Sequence[str], update: typed.Update) -> tuple[list[str], int]:
        """Applies a field update to the stored images among `ids` in one transaction; returns (the ids
        updated, the head after)."""
        with self.writing() as writer:
            updated = writer.update(ids, update)
        return updated, writer.position

    def delete(self, ids: Sequence[str], now_ms: int | None = None) -> tuple[list[str], int]:
        """Deletes images by id in one transaction; returns (the ids that existed, the head after)."""
        with self.writing() as writer:
            existed = writer.delete(ids, now_ms)
        return existed, writer.position

    # --- reads ---------------------------------------------------------------------------------

    def head(self) -> int:
        """The latest committed head: every position below it is committed."""
        with self.pool.connection() as conn:
            value = _scalar(conn, "SELECT value FROM meta WHERE key = 'next_position'")
            conn.rollback()
        return int(value)

    def feed(self, after: int, shard: ShardSpec, limit: int = 5000) -> Feed:
        """The changes of `shard` with position >= after (deletions as vector-less changes), at most
        `limit` of each kind, from one snapshot."""
        with self.pool.connection() as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with conn.transaction():
                    head = int(_scalar(conn, "SELECT value FROM meta WHERE key = 'next_position'"))
                    row = conn.execute("SELECT value FROM meta WHERE key = 'forgotten_below'").fetchone()
                    forgotten_below = int(row[0]) if row else 0
                    images = conn.execute(
                        "SELECT i.position, i.id, i.label, i.vector, i.uri, i.metadata, i.fields, t.data, t.mime_type,"
                        " i.submitted_ms"
                        " FROM images i LEFT JOIN thumbnails t ON t.id = i.id"
                        " WHERE i.shard = %s AND i.position >= %s AND i.position < %s ORDER BY i.position LIMIT %s",
                        (shard.index, after, head, limit)).fetchall()
                    gone = conn.execute(
                        "SELECT position, id FROM deletions WHERE shard = %s AND position >= %s AND position < %s"
                        " ORDER BY position LIMIT %s", (shard.index, after, head, limit)).fetchall()
            finally:
                conn.isolation_level = None
        upto = head
        if len(images) == limit:
            upto = min(upto, int(images[-1][0]) + 1)
        if len(gone) == limit:
            upto = min(upto, int(gone[-1][0]) + 1)
        changes = [Change(int(r[0]), r[1], int(r[2]), np.frombuffer(r[3], dtype="<f4").astype(np.float32), r[4],
                          json.loads(r[5]), typed.from_json(r[6]), bytes(r[7] or b""), r[8] or "", int(r[9]))
                   for r in images if r[0] < upto]
        changes += [Change(int(r[0]), r[1]) for r in gone if r[0] < upto]
        changes.sort(key=lambda c: c.position)
        return Feed(changes, max(upto, after), head, forgotten_below)

    def close(self) -> None:
        self.pool.close()


class Writer:
    """Writes inside one `PgStore.writing()` transaction; `position` is the next free position."""

    def __init__(self, conn: psycopg.Connection, position: int, shards: int) -> None:
        self.conn = conn
        self.position = position
        self.shards = shards

    def upsert(self, records: Sequence[ImageRecord]) -> list[str]:
        """Writes records (unit vectors), one position each; returns the ids skipped because their
        image was deleted after submission. A record whose vector is unchanged keeps its label."""
        now = int(time.time() * 1000)
        conn = self.conn
        ids = list(dict.fromkeys(r.id for r in records))
        found = conn.execute("SELECT id, label, vector, fields_ms, metadata, fields FROM images WHERE id = ANY(%s)",
                             (ids,)).fetchall()
        current = {r[0]: (int(r[1]), bytes(r[2])) for r in found}
        updated = {r[0]: (int(r[3]), r[4], r[5]) for r in found if r[3]}  # id -> its last field update
        deleted = {r[0]: int(r[1]) for r in conn.execute(
            "SELECT id, deleted_at_ms FROM deletions WHERE id = ANY(%s)", (ids,))}
        skipped: list[str] = []
        rows = []
        thumbnails: dict[str, tuple[bytes, str]] = {}  # id -> (data, MIME type); empty data: none
        for rec in records:
            if rec.submitted_at_ms > 0 and deleted.get(rec.id, -1) >= rec.submitted_at_ms:
                skipped.append(rec.id)
                continue
            blob = np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()
            old = current.get(rec.id)
            label = old[0] if old is not None and old[1] == blob else self.position
            current[rec.id] = (label, blob)
            fields_ms, metadata_json, fields_json = updated.get(rec.id, (0, "", ""))
            if not 0 < rec.submitted_at_ms <= fields_ms:  # else fields updated after this submission: they stay
                metadata_json = json.dumps(rec.metadata, sort_keys=True, separators=(",", ":"))
                fields_json = typed.to_json(rec.fields)
            rows.append((rec.id, label, shard_of(rec.id, self.shards), self.position, rec.uri,
                         metadata_json, fields_json, blob, now, min(rec.submitted_at_ms, 2**63 - 1)))
            thumbnails[rec.id] = (rec.thumbnail, rec.thumbnail_mime_type)
            self.position += 1
        conn.cursor().executemany(
            "INSERT INTO images(id, label, shard, position, uri, metadata, fields, vector, updated_ms, submitted_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label,"
            " position = EXCLUDED.position, uri = EXCLUDED.uri, metadata = EXCLUDED.metadata,"
            " fields = EXCLUDED.fields, vector = EXCLUDED.vector, updated_ms = EXCLUDED.updated_ms,"
            " submitted_ms = EXCLUDED.submitted_ms", rows)
        self._set_thumbnails(thumbnails)
        return skipped

    def update(self, ids: Sequence[str], update: typed.Update) -> list[str]:
        """Applies a field update to the stored images among `ids`, one position each (labels, vectors and
        thumbnails unchanged); returns the ids updated. Raises InvalidArgument when an image would pass
        the fields limit (the caller's transaction then writes nothing)."""
        now = int(time.time() * 1000)
        unique = list(dict.fromkeys(ids))
        found = {r[0]: r for r in self.conn.execute(
            "SELECT id, metadata, fields FROM images WHERE id = ANY(%s)", (unique,))}
        rows = []
        for image_id in unique:
            if image_id not in found:
                continue
            fields, metadata = update.apply(typed.from_json(found[image_id][2]), json.loads(found[image_id][1]),
                                            f"image {image_id!r}")
            rows.append((json.dumps(metadata, sort_keys=True, separators=(",", ":")), typed.to_json(fields), now, now,
                         self.position, image_id))
            self.position += 1
        self.conn.cursor().executemany(
            "UPDATE images SET metadata = %s, fields = %s, updated_ms = %s, fields_ms = %s, position = %s"
            " WHERE id = %s", rows)
        return [r[-1] for r in rows]

    def _set_thumbnails(self, thumbnails: dict[str, tuple[bytes, str]]) -> None:
        """Stores each image's thumbnail (the last one given for its id), or removes it when empty."""
        removed = [i for i, (data, _) in thumbnails.items() if not data]
        if removed:
            self.conn.execute("DELETE FROM thumbnails WHERE id = ANY(%s)", (removed,))
        self.conn.cursor().executemany(
            "INSERT INTO thumbnails(id, mime_type, data) VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
            " SET mime_type = EXCLUDED.mime_type, data = EXCLUDED.data",
            [(i, mime_type, data) for i, (data, mime_type) in thumbnails.items() if data])

    def delete(self, ids: Sequence[str], now_ms: int | None = None) -> list[str]:
        """Deletes images by id, one position per id; returns the ids that existed. Every id's deletion
        time is recorded (existing or not: its job may still be queued)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        unique = list(dict.fromkeys(ids))
        conn = self.conn
        forgotten = conn.execute("DELETE FROM deletions WHERE deleted_at_ms < %s RETURNING position",
                                 (now - DELETION_MEMORY_MS,)).fetchall()
        if forgotten:  # a mirror older than these positions can no longer learn of those deletions
            conn.execute("INSERT INTO meta(key, value) VALUES ('forgotten_below', %s) ON CONFLICT (key) DO UPDATE"
                         " SET value = GREATEST(meta.value::bigint, EXCLUDED.value::bigint)::text",
                         (str(max(int(r[0]) for r in forgotten) + 1),))
        existed = {r[0] for r in conn.execute("DELETE FROM images WHERE id = ANY(%s) RETURNING id", (unique,))}
        conn.execute("DELETE FROM thumbnails WHERE id = ANY(%s)", (unique,))
        rows = [(image_id, shard_of(image_id, self.shards), self.position + i, now)
                for i, image_id in enumerate(unique)]
        conn.cursor().executemany(
            "INSERT INTO deletions(id, shard, position, deleted_at_ms) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET shard = EXCLUDED.shard, position = EXCLUDED.position,"
            " deleted_at_ms = EXCLUDED.deleted_at_ms", rows)
        self.position += len(unique)
        return [i for i in unique if i in existed]


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://..."
    return f"database {info.get('dbname', '?')} on {info.get('host', 'localhost')}:{info.get('port', 5432)}"


def _scalar(conn: Any, sql: str) -> Any:
    """The first column of the one row `sql` returns (the meta rows the schema always holds)."""
    row = conn.execute(sql).fetchone()
    if row is None:
        raise FailedPrecondition(f"the PostgreSQL store lacks a row the schema creates ({sql})")
    return row[0]
