"""The durable image store: SQLite (WAL) holding every image's id, label, uri, metadata, typed fields
and vector.

This is the source of truth. The FAISS index is derived from it and can always be rebuilt from it.
Each image id owns exactly one live label; an upsert that changes an image's vector gives it a new
label and reports the old one as stale (the index keeps it until compaction, searches skip it).
Labels only grow, so a label doubles as a sequence number: an index snapshot that covers every
label below L is brought up to date by adding the live rows with label >= L.
Commits use synchronous=FULL: an upsert that returned survives kill -9 and power loss.
Deletes win over earlier submissions: `deletions` keeps each deleted id's deletion time (for
DELETION_MEMORY_MS), and an upsert whose image was submitted at or before that time is skipped.
Typed fields (fields.py) are kept twice: as JSON in images.fields (returned with results) and as rows
of the `fields` table, (label, key, type, value) with one row per field and per string-list item,
indexed by (key, value, type, label), so that each filter condition is one covering-index range scan
returning labels (search/filters.py). Cost per image: about 40 bytes + the key and value sizes per row,
twice (table and index), e.g. ~1 KB for 10 short fields.

`ImageStore` is the seam: the operations a collection needs from its store. With a PostgreSQL store
(postgres.py) the shared database is the truth and each server's SQLite `SqliteStore` is a local mirror of
its shard, written only by `apply` (replicated changes with the labels the database gave them, and the
position applied, in one transaction), so searches, filters and joins stay local.
Field updates (`update_fields`, RecordService.UpdateRecords) rewrite an image's fields and metadata in
place (same label: the index is untouched) and record when in images.fields_ms. They win over earlier
submissions like deletes do: an upsert of an image submitted at or before its fields_ms writes its
vector, uri and thumbnail but keeps the stored fields and metadata.
Scrolls (`scroll`) read records in id order after a given id (keyset pages: no state between pages).
Thumbnails (made by the workers) live in their own table keyed by image id, so that the images table
that searches read stays lean; an upsert sets or removes the image's thumbnail, a delete removes it
(`_set_thumbnail`), and `thumbnails` reads them.
Storage failures of a write are the caller's to retry, and nothing of the write stays: a full disk
(SQLITE_FULL) is ResourceExhausted, other I/O errors and a locked database are Unavailable, and the
transaction is rolled back (SQLite may already have rolled it back itself).
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from clipsearch_core.errors import FailedPrecondition, ResourceExhausted, Unavailable

from . import fields as typed
from .records import (
    DELETION_MEMORY_MS,
    Change,
    ImageRecord,
    ImageStore,
    StoredImage,
    StoredRecord,
    UpsertResult,
)

__all__ = ["DELETION_MEMORY_MS", "Change", "ImageRecord", "ImageStore", "SqliteStore", "StoredImage", "UpsertResult",
           "storage_errors"]

SQL_CHUNK = 500  # parameters per IN (...) lookup, well under SQLite's limit
SCROLL_BY_LABELS_MAX = 20_000  # a filtered scroll page sorts the ids of up to this many matches; more: id-order scan
SCROLL_SCAN_CHUNK = 5_000  # (id, label) rows read per step of a filtered scroll's id-order scan

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    label INTEGER NOT NULL UNIQUE,
    uri TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    updated_ms INTEGER NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}',
    fields_ms INTEGER NOT NULL DEFAULT 0,
    submitted_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS fields (label INTEGER NOT NULL, key TEXT NOT NULL, type INTEGER NOT NULL, value);
CREATE INDEX IF NOT EXISTS fields_by_key ON fields(key, value, type, label);
CREATE INDEX IF NOT EXISTS fields_by_label ON fields(label);
CREATE TABLE IF NOT EXISTS deletions (id TEXT PRIMARY KEY, deleted_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS thumbnails (id TEXT PRIMARY KEY, mime_type TEXT NOT NULL, data BLOB NOT NULL);
"""



# SQLite's primary result codes (the low byte of an extended code) that a later retry may not meet.
_SQLITE_FULL = 13
_SQLITE_TRANSIENT = {5: "the database is locked", 6: "a table is locked", 10: "a disk I/O error",
                     14: "the database file cannot be opened", 15: "a locking protocol error"}
DISK_FULL_RETRY_S = 5.0  # the retry-after hint of a write refused for a full disk
_MAX_MS = 2**63 - 1  # submitted_at_ms is a uint64 in the API; SQLite and PostgreSQL integers are signed


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any error (unless SQLite
    already rolled back, as it does after some errors: a second ROLLBACK would hide the first error).
    Storage failures become the domain's retryable errors (`storage_errors`)."""
    with storage_errors():
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


@contextmanager
def storage_errors() -> Iterator[None]:
    """SQLite's and the file system's storage failures as ResourceExhausted (full disk) or Unavailable."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            raise _disk_full(str(exc)) from exc
        if code in _SQLITE_TRANSIENT:
            raise Unavailable(f"the image store failed ({_SQLITE_TRANSIENT[code]}: {exc}); "
                              "the write was not made, retry") from exc
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(exc.strerror or str(exc)) from exc
        if exc.errno == errno.EIO:
            raise Unavailable(f"the server's disk failed ({exc.strerror}); the write was not made, retry") from exc
        raise


def _disk_full(detail: str) -> ResourceExhausted:
    return ResourceExhausted(f"the server's disk is full ({detail}): the write was not made; retry once space "
                             "is freed", retry_after_s=DISK_FULL_RETRY_S)


def _record_columns(vectors: bool) -> str:
    return "id, uri, metadata, fields, updated_ms, submitted_ms" + (", vector" if vectors else "")


def _record(row: Sequence) -> StoredRecord:
    """A StoredRecord from a row of `_record_columns`."""
    return StoredRecord(row[0], row[1], json.loads(row[2]), typed.from_json(row[3]), int(row[4]),
                        bytes(row[6]) if len(row) > 6 else b"", int(row[5]))


def _records(rows: Sequence[Sequence]) -> list[StoredRecord]:
    """StoredRecords of many rows (a scroll page), letting go of the GIL every 50 (about 0.6 ms): other
    threads (searches, writes) need it at each of their steps, and would wait up to the 5 ms switch
    interval for a thread that keeps it."""
    out: list[StoredRecord] = []
    for start in range(0, len(rows), 50):
        out.extend(_record(r) for r in rows[start:start + 50])
        time.sleep(0)
    return out


def _in_chunks(conn: sqlite3.Connection, sql: str, values: Sequence[object], after: Sequence[object] = ()
               ) -> list[tuple]:
    """Runs `sql` (a SELECT or DELETE), whose "IN ({})" takes `values` (and then the parameters `after`),
    in chunks of SQL_CHUNK; the rows of all chunks."""
    rows: list[tuple] = []
    for start in range(0, len(values), SQL_CHUNK):
        chunk = list(values[start:start + SQL_CHUNK])
        rows.extend(conn.execute(sql.format(",".join("?" * len(chunk))), [*chunk, *after]).fetchall())
    return rows


def _update_sql(update: typed.Update) -> tuple[str, str, list[object]]:
    """SQL expressions of an image's new fields and metadata JSON after `update`, and their parameters (the
    fields expression's, then the metadata expression's). A key set in one map is removed from the other;
    a typed field is removed before it is set, since json_patch would merge two values' objects."""
    if update.replace:
        return "?", "?", [typed.to_json(update.fields),
                          json.dumps(update.metadata, sort_keys=True, separators=(",", ":"))]
    drop_fields = {key: None for key in (*update.fields, *update.metadata, *update.unset)}
    set_fields = json.loads(typed.to_json(update.fields))
    metadata_patch: dict[str, str | None] = {key: None for key in (*update.fields, *update.unset)}
    metadata_patch.update(update.metadata)
    return ("json_patch(json_patch(coalesce(nullif(fields, ''), '{}'), ?), ?)",
            "json_patch(coalesce(nullif(metadata, ''), '{}'), ?)",
            [json.dumps(patch, separators=(",", ":")) for patch in (drop_fields, set_fields, metadata_patch)])


class SqliteStore:
    """SQLite-backed image store. Thread-safe: one connection per thread, writes serialized."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        self._migrate(conn)
        conn.executescript(_SCHEMA)
        columns = [r[1] for r in conn.execute("PRAGMA table_info(images)")]
        for column in ("fields_ms", "submitted_ms"):  # stores written before field updates
            if column not in columns:
                with _immediate(conn):
                    conn.execute(f"ALTER TABLE images ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        self._check_fields_format(conn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Stores written before typed fields: add images.fields and index metadata as string fields."""
        columns = [r[1] for r in conn.execute("PRAGMA table_info(images)")]
        if not columns or "fields" in columns:
            return
        with _immediate(conn):
            conn.execute("ALTER TABLE images ADD COLUMN fields TEXT NOT NULL DEFAULT '{}'")
            conn.execute("CREATE TABLE IF NOT EXISTS fields"
                         " (label INTEGER NOT NULL, key TEXT NOT NULL, type INTEGER NOT NULL, value)")
            for label, meta in conn.execute("SELECT label, metadata FROM images").fetchall():
                conn.executemany("INSERT INTO fields(label, key, type, value) VALUES (?, ?, ?, ?)",
                                 [(label, k, typed.T_STRING, v) for k, v in json.loads(meta).items()])

    def _check_fields_format(self, conn: sqlite3.Connection) -> None:
        """Records the stored fields' format (fields.FIELDS_FORMAT) in a store that has none (new, or written
        before the format was recorded: those hold version 1); refuses a store that holds another."""
        stored = self._meta_in_txn(conn, "fields_format")
        if stored is None:
            with _immediate(conn):
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('fields_format', ?)",
                             (typed.FIELDS_FORMAT,))
        elif stored != typed.FIELDS_FORMAT:
            raise FailedPrecondition(f"the image store {self.path} holds typed fields in format {stored!r}; this "
                                     f"server reads format {typed.FIELDS_FORMAT!r}: run the version that wrote it")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True, timeout=30)
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock, storage_errors():
            self._conn().execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def upsert(self, records: Sequence[ImageRecord]) -> UpsertResult:
        """Writes records in one transaction, with a few statements per batch (not per record).

        A record whose vector equals the stored one only updates uri and metadata (no new label).
        A record submitted at or before its id's last deletion is skipped (the delete wins); one submitted
        at or before its image's last field update keeps the stored fields and metadata (the update wins).
        Records apply in order: an id given twice ends as its last record (a label its first one added is stale).
        """
        added: list[tuple[int, np.ndarray]] = []
        stale: list[int] = []
        skipped: list[str] = []
        now = int(time.time() * 1000)
        ids = list(dict.fromkeys(rec.id for rec in records))
        with self._write_lock:
            with _immediate(self._conn()) as conn:
                next_label = int(self._meta_in_txn(conn, "next_label") or 0)
                rows = _in_chunks(conn, "SELECT id, label, vector, fields_ms, metadata, fields FROM images"
                                  " WHERE id IN ({})", ids)
                stored = {r[0]: (int(r[1]), bytes(r[2])) for r in rows}
                updated = {r[0]: (int(r[3]), r[4], r[5]) for r in rows if r[3]}  # id -> its last field update
                deleted = {r[0]: int(r[1]) for r in
                           _in_chunks(conn, "SELECT id, deleted_at_ms FROM deletions WHERE id IN ({})", ids)}
                current = dict(stored)  # id -> (label, vector blob) as of the record being applied
                images: dict[str, tuple] = {}  # id -> its row as the batch leaves it
                field_rows: dict[int, list[tuple]] = {}  # label -> its field rows
                thumbnails: dict[str, tuple[bytes, str]] = {}  # id -> (data, MIME type); empty data: none
                for rec in records:
                    if rec.submitted_at_ms > 0 and deleted.get(rec.id, -1) >= rec.submitted_at_ms:
                        skipped.append(rec.id)
                        continue
                    blob = np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()
                    old = current.get(rec.id)
                    if old is not None and old[1] == blob:
                        label = old[0]
                    else:
                        if old is not None:
                            stale.append(old[0])
                            field_rows.pop(old[0], None)
                        label = next_label
                        next_label += 1
                        added.append((label, rec.vector))
                    current[rec.id] = (label, blob)
                    fields_ms, metadata_json, fields_json = updated.get(rec.id, (0, "", ""))
                    if 0 < rec.submitted_at_ms <= fields_ms:  # fields updated after this submission: they stay
                        metadata, fields = json.loads(metadata_json), typed.from_json(fields_json)
                    else:
                        metadata, fields = rec.metadata, rec.fields
                        metadata_json = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
                        fields_json = typed.to_json(fields)
                    images[rec.id] = (rec.id, label, rec.uri, metadata_json, blob, now, fields_json, fields_ms,
                                      min(rec.submitted_at_ms, _MAX_MS))
                    field_rows[label] = [(label, *row) for row in typed.rows(typed.merged(fields, metadata))]
                    thumbnails[rec.id] = (rec.thumbnail, rec.thumbnail_mime_type)
                _in_chunks(conn, "DELETE FROM fields WHERE label IN ({})",
                           [stored[i][0] for i in images if i in stored])
                conn.executemany("INSERT OR REPLACE INTO images(id, label, uri, metadata, vector, updated_ms, fields,"
                                 " fields_ms, submitted_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", list(images.values()))
                conn.executemany("INSERT INTO fields(label, key, type, value) VALUES (?, ?, ?, ?)",
                                 [row for rows in field_rows.values() for row in rows])
                _in_chunks(conn, "DELETE FROM thumbnails WHERE id IN ({})",
                           [i for i, (d, _) in thumbnails.items() if not d])
                conn.executemany("INSERT OR REPLACE INTO thumbnails(id, mime_type, data) VALUES (?, ?, ?)",
                                 [(i, mime_type, data) for i, (data, mime_type) in thumbnails.items() if data])
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_label', ?)", (str(next_label),)
                )
        return UpsertResult(added, stale, skipped)

    @staticmethod
    def _insert_fields(conn: sqlite3.Connection, label: int, rec: "ImageRecord | Change") -> None:
        conn.executemany("INSERT INTO fields(label, key, type, value) VALUES (?, ?, ?, ?)",
                         [(label, *row) for row in typed.rows(typed.merged(rec.fields, rec.metadata))])

    @staticmethod
    def _meta_in_txn(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def by_labels(self, labels: Sequence[int]) -> dict[int, StoredImage]:
        """The live images among `labels` (stale labels are absent from the result)."""
        found: dict[int, StoredImage] = {}
        for r in _in_chunks(self._conn(), "SELECT id, label, uri, metadata, fields FROM images WHERE label IN ({})",
                            [int(x) for x in labels]):
            metadata = json.loads(r[3])
            found[int(r[1])] = StoredImage(r[0], int(r[1]), r[2], metadata,
                                           typed.merged(typed.from_json(r[4]), metadata))
        return found

    @staticmethod
    def _set_thumbnail(conn: sqlite3.Connection, image_id: str, data: bytes, mime_type: str) -> None:
        """Stores an image's thumbnail, or removes it when `data` is empty (inside the caller's transaction)."""
        if data:
            conn.execute("INSERT OR REPLACE INTO thumbnails(id, mime_type, data) VALUES (?, ?, ?)",
                         (image_id, mime_type, data))
        else:
            conn.execute("DELETE FROM thumbnails WHERE id = ?", (image_id,))

    def thumbnails(self, ids: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """id -> (thumbnail bytes, MIME type) for those of `ids` that have one."""
        rows = _in_chunks(self._conn(), "SELECT id, mime_type, data FROM thumbnails WHERE id IN ({})",
                          list(dict.fromkeys(ids)))
        return {image_id: (bytes(data), mime_type) for image_id, mime_type, data in rows}

    def records(self, ids: Sequence[str], vectors: bool = False) -> dict[str, StoredRecord]:
        """id -> record for those of `ids` that are stored (live); with `vectors`, each with its vector bytes."""
        rows = _in_chunks(self._conn(), f"SELECT {_record_columns(vectors)} FROM images WHERE id IN ({{}})",
                          list(dict.fromkeys(ids)))
        return {r[0]: _record(r) for r in rows}

    def update_fields(self, ids: Sequence[str], update: typed.Update, now_ms: int | None = None) -> list[str]:
        """Applies a field update to the stored images among `ids`, in one transaction (labels, vectors and
        thumbnails unchanged; the field rows of the keys it touches rewritten); returns the ids updated, in
        the order given. Raises InvalidArgument (nothing written) when an image would pass the fields limit.

        The JSON of each image is changed by SQLite itself (json_patch), and the field rows by a few
        statements per key, not per image: the write holds Python's GIL for little of its time, so searches
        running beside a large update by filter keep their latency."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        unique = list(dict.fromkeys(ids))
        fields_sql, metadata_sql, params = _update_sql(update)
        count_sql = (f"(SELECT count(*) FROM json_each({fields_sql})) + "
                     f"(SELECT count(*) FROM json_each({metadata_sql}))")
        with self._write_lock:
            with _immediate(self._conn()) as conn:
                found = dict(_in_chunks(conn, "SELECT id, label FROM images WHERE id IN ({})", unique))
                targets = [i for i in unique if i in found]
                for start in range(0, len(targets), SQL_CHUNK):
                    chunk = targets[start:start + SQL_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    over = conn.execute(f"SELECT id, fields, metadata FROM images WHERE {count_sql} > ? AND id IN "
                                        f"({marks}) LIMIT 1", [*params, typed.MAX_FIELDS, *chunk]).fetchone()
                    if over is not None:  # raises the limit's InvalidArgument, naming the image
                        update.apply(typed.from_json(over[1]), json.loads(over[2]), f"image {over[0]!r}")
                    conn.execute(f"UPDATE images SET fields = {fields_sql}, metadata = {metadata_sql}, updated_ms = ?,"
                                 f" fields_ms = ? WHERE id IN ({marks})", [*params, now, now, *chunk])
                labels = [int(found[i]) for i in targets]
                if update.replace:
                    _in_chunks(conn, "DELETE FROM fields WHERE label IN ({})", labels)
                else:
                    touched = list(dict.fromkeys([*update.fields, *update.metadata, *update.unset]))
                    # by label: the (key, ...) index would scan every row of a key the update is adding
                    _in_chunks(conn, "DELETE FROM fields INDEXED BY fields_by_label WHERE label IN ({}) AND key IN ("
                               + ",".join("?" * len(touched)) + ")", labels, touched)
                rows = typed.rows(typed.merged(update.fields, update.metadata))
                conn.executemany("INSERT INTO fields(label, key, type, value) VALUES (?, ?, ?, ?)",
                                 [(label, *row) for label in labels for row in rows])
        return targets

    def ids_of(self, labels: Sequence[int]) -> list[str]:
        """The ids of the live images among `labels` (in no particular order)."""
        return [r[0] for r in _in_chunks(self._conn(), "SELECT id FROM images WHERE label IN ({})",
                                         [int(x) for x in labels])]

    def scroll(self, after: str, limit: int, labels: np.ndarray | None = None,
               vectors: bool = False) -> list[StoredRecord]:
        """Up to `limit` records with ids after `after` ("": from the first), in id order; with `labels`
        (sorted), only images among them. Few labels: their ids are sorted here; many: the ids are read
        in id order from the primary key's index and kept when their label is among `labels`."""
        conn = self._conn()
        if labels is None:
            sql = f"SELECT {_record_columns(vectors)} FROM images WHERE id > ? ORDER BY id LIMIT ?"
            return _records(conn.execute(sql, (after, limit)).fetchall())
        if len(labels) <= SCROLL_BY_LABELS_MAX:
            ids = sorted(i for i in self.ids_of(labels.tolist()) if i > after)[:limit]
        else:
            ids, last = [], after
            while len(ids) < limit:
                rows = conn.execute("SELECT id, label FROM images WHERE id > ? ORDER BY id LIMIT ?",
                                    (last, SCROLL_SCAN_CHUNK)).fetchall()
                if not rows:
                    break
                found = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
                at = np.minimum(np.searchsorted(labels, found), len(labels) - 1)
                ids.extend(rows[i][0] for i in np.flatnonzero(labels[at] == found).tolist())
                last = rows[-1][0]
            ids = ids[:limit]
        found_records = self.records(ids, vectors)
        return [found_records[i] for i in ids if i in found_records]

    def labels_where(self, condition: str, params: Sequence[object]) -> np.ndarray:
        """Sorted distinct labels of the field rows meeting an SQL condition over (key, type, value)
        (search/filters.py builds it; values are always bound as parameters)."""
        rows = self._conn().execute(f"SELECT DISTINCT label FROM fields WHERE {condition} ORDER BY label",
                                    list(params)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vector_of(self, image_id: str) -> np.ndarray | None:
        row = self._conn().execute("SELECT vector FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype="<f4").astype(np.float32)

    def label_of(self, image_id: str) -> int | None:
        row = self._conn().execute("SELECT label FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else int(row[0])

    def delete(self, ids: Sequence[str], now_ms: int | None = None) -> list[tuple[str, int]]:
        """Deletes images by id in one transaction; returns (id, label) of those that existed.
        Every id's deletion time is recorded (existing or not: its job may still be queued)."""
        removed: list[tuple[str, int]] = []
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self._write_lock:
            with _immediate(self._conn()) as conn:
                conn.execute("DELETE FROM deletions WHERE deleted_at_ms < ?", (now - DELETION_MEMORY_MS,))
                for image_id in ids:
                    conn.execute("INSERT OR REPLACE INTO deletions(id, deleted_at_ms) VALUES (?, ?)", (image_id, now))
                    row = conn.execute("DELETE FROM images WHERE id = ? RETURNING label", (image_id,)).fetchone()
                    self._set_thumbnail(conn, image_id, b"", "")
                    if row is not None:
                        conn.execute("DELETE FROM fields WHERE label = ?", (int(row[0]),))
                        removed.append((image_id, int(row[0])))
        return removed

    def apply(self, changes: Sequence[Change], position: int) -> UpsertResult:
        """Applies replicated changes in order, with their labels, and records `position` (every change
        below it is applied) in the same transaction. Returns the new (label, vector) pairs to index and,
        as `stale`, the labels that left (replaced vectors and deleted images)."""
        added: list[tuple[int, np.ndarray]] = []
        gone: list[int] = []
        now = int(time.time() * 1000)
        with self._write_lock:
            with _immediate(self._conn()) as conn:
                next_label = int(self._meta_in_txn(conn, "next_label") or 0)
                for change in changes:
                    row = conn.execute("SELECT label FROM images WHERE id = ?", (change.id,)).fetchone()
                    old = None if row is None else int(row[0])
                    if old is not None:
                        conn.execute("DELETE FROM fields WHERE label = ?", (old,))
                    self._set_thumbnail(conn, change.id, change.thumbnail, change.thumbnail_mime_type)
                    if change.vector is None:
                        if old is not None:
                            conn.execute("DELETE FROM images WHERE id = ?", (change.id,))
                            gone.append(old)
                        continue
                    conn.execute(
                        "INSERT OR REPLACE INTO images(id, label, uri, metadata, vector, updated_ms, fields,"
                        " submitted_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (change.id, change.label, change.uri,
                         json.dumps(change.metadata, sort_keys=True, separators=(",", ":")),
                         np.ascontiguousarray(change.vector, dtype="<f4").tobytes(), now, typed.to_json(change.fields),
                         change.submitted_ms),
                    )
                    self._insert_fields(conn, change.label, change)
                    if old != change.label:
                        if old is not None:
                            gone.append(old)
                        added.append((change.label, change.vector))
                        next_label = max(next_label, change.label + 1)
                conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                 [("next_label", str(next_label)), ("applied_position", str(position))])
        return UpsertResult(added, gone, [])

    def applied_position(self) -> int:
        """The position recorded by the last `apply` (0: none)."""
        return int(self.get_meta("applied_position") or 0)

    def next_label(self) -> int:
        """The label the next new vector will get: every existing label is below it."""
        return int(self.get_meta("next_label") or 0)

    def live_labels(self) -> np.ndarray:
        rows = self._conn().execute("SELECT label FROM images").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def iter_vectors(
        self, dim: int, start: int = 0, stop: int | None = None, chunk: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Live (labels, vectors) with start <= label < stop, in label order and chunks."""
        last = start - 1
        stop = (1 << 62) if stop is None else stop
        while True:
            rows = self._conn().execute(
                "SELECT label, vector FROM images WHERE label > ? AND label < ? ORDER BY label LIMIT ?",
                (last, stop, chunk),
            ).fetchall()
            if not rows:
                return
            labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            yield labels, vectors.astype(np.float32)
            last = int(labels[-1])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
