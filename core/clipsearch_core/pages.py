"""Page tokens: the cursor format shared by the search server and the router.

A page token says where the previous page ended, as a position in the total order of results:
score descending, then image id ascending (ties in score are ordered by id). The next page holds the
best results strictly after that position. Because the cursor is a position and not an offset, the
router can hand the same token to every shard and merge their pages into the global next page, and an
image added or deleted between pages never shifts the results that follow (docs/filters.md, pages).

`returned` counts the results already returned; `returned + k` may not exceed `MAX_DEPTH` (the search
behind a page has to look that deep). `query` is a fingerprint of the query (its kind, content, filter
and threshold): a token used with another query is refused, since its position would mean nothing.

The token is opaque to callers (URL-safe base64 of a small JSON object); it carries no secret and
grants nothing: a forged token only changes the forger's own page.

Scroll cursors (RecordService.ScrollRecords) are the same kind of token for the id order of records: the
last id returned and the fingerprint of the scroll's filter, {"v": 1, "a": id, "f": fingerprint}. The
next page holds the records with ids strictly after it (by their UTF-8 bytes, which is also the order of
Python's str comparison and of SQLite's BINARY collation), so it needs no server state and any replica or
router continues it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument

__all__ = ["MAX_CURSOR_CHARS", "MAX_DEPTH", "MAX_TOKEN_CHARS", "Cursor", "after", "decode", "encode", "fingerprint",
           "next_token", "request_fingerprint", "scroll_after", "scroll_cursor", "scroll_fingerprint"]

MAX_DEPTH = 10_000  # results reachable by paging one query: returned + k <= MAX_DEPTH
MAX_TOKEN_CHARS = 1024
_VERSION = 1


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last result's (score, id), how many results came before, and the query's fingerprint."""

    score: float
    id: str
    returned: int
    query: str


def fingerprint(*parts: bytes | str) -> str:
    """A short digest identifying a query: pass its kind, content, serialized filter and threshold."""
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def request_fingerprint(request: Any, kind: str) -> str:
    """The fingerprint of a (validated) TextSearch/ImageSearch request or BatchSearch query whose query
    oneof is `kind`: its kind and content, filter, min_score and collapse threshold (k may change between
    pages). The servers and the router compute it alike, so a router's token is valid on every shard."""
    value = getattr(request, kind)
    content = value.strip() if kind == "text" else (
        value.SerializeToString(deterministic=True) if kind == "terms" else value)
    flt = b"f" + request.filter.SerializeToString(deterministic=True) if request.HasField("filter") else b""
    min_score = float(request.min_score) if request.HasField("min_score") else None
    collapse = float(request.collapse_threshold) if request.HasField("collapse_threshold") else None
    return fingerprint(kind, content, flt, repr(min_score), repr(collapse))


def next_token(last_score: float, last_id: str, returned: int, query: str, more: bool) -> str:
    """The next_page_token after a page whose last result is (last_score, last_id), `returned` results
    having been returned so far: empty when nothing more matches (`more` false) or the depth limit is reached."""
    if not more or returned >= MAX_DEPTH:
        return ""
    return encode(Cursor(float(last_score), last_id, returned, query))


def encode(cursor: Cursor) -> str:
    """The token for a cursor."""
    body = {"v": _VERSION, "s": cursor.score, "i": cursor.id, "n": cursor.returned, "q": cursor.query}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(token: str, query: str, k: int) -> Cursor:
    """The cursor in `token`, checked against the query it is used with and the depth limit.

    Raises InvalidArgument (naming the page_token) when the token is malformed, belongs to another
    query, or `returned + k` goes past MAX_DEPTH.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument(f"page_token is longer than {MAX_TOKEN_CHARS} characters: "
                              "pass back a next_page_token unchanged")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        cursor = Cursor(float(body["s"]), str(body["i"]), int(body["n"]), str(body["q"]))
        version = body["v"]
    except (binascii.Error, ValueError, TypeError, KeyError, OverflowError) as exc:
        # 1e400 -> inf -> int(): OverflowError
        raise InvalidArgument("page_token is not a token this service issued: "
                              "pass back a next_page_token unchanged") from exc
    if version != _VERSION or not math.isfinite(cursor.score) or cursor.returned < 1:
        raise InvalidArgument("page_token is not a token this service issued: pass back a next_page_token unchanged")
    if cursor.query != query:
        raise InvalidArgument("page_token belongs to another query: page with the same query, filter and min_score")
    if cursor.returned + k > MAX_DEPTH:
        raise InvalidArgument(f"page_token goes past the paging depth limit: at most {MAX_DEPTH} results per query "
                              "(returned so far + k)")
    return cursor


def after(score: float, image_id: str, cursor: Cursor | None) -> bool:
    """Whether a result at (score, id) comes strictly after the cursor in (score desc, id asc) order."""
    if cursor is None:
        return True
    return score < cursor.score or (score == cursor.score and image_id > cursor.id)


MAX_CURSOR_CHARS = 2048  # a scroll cursor: an id of up to 256 characters (4 UTF-8 bytes each), in base64
_SCROLL_VERSION = 1


def scroll_fingerprint(request: Any) -> str:
    """The fingerprint of a ScrollRecords request's filter (the servers and the router compute it alike)."""
    flt = b"f" + request.filter.SerializeToString(deterministic=True) if request.HasField("filter") else b""
    return fingerprint("scroll", flt)


def scroll_cursor(last_id: str, query: str) -> str:
    """The next_cursor after a page whose last record is `last_id`."""
    body = {"v": _SCROLL_VERSION, "a": last_id, "f": query}
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def scroll_after(cursor: str, query: str) -> str:
    """The id a scroll continues after ("" for the first page), checked against the scroll's filter.
    Raises InvalidArgument (naming the cursor) for a cursor this service did not issue or one of another filter."""
    if not cursor:
        return ""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidArgument(f"cursor is longer than {MAX_CURSOR_CHARS} characters: pass back a next_cursor unchanged")
    try:
        body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        version, last_id, query_of = body["v"], body["a"], body["f"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument("cursor is not one this service issued: pass back a next_cursor unchanged") from exc
    if version != _SCROLL_VERSION or not isinstance(last_id, str) or not last_id or not isinstance(query_of, str):
        raise InvalidArgument("cursor is not one this service issued: pass back a next_cursor unchanged")
    if query_of != query:
        raise InvalidArgument("cursor belongs to a scroll with another filter: continue with the same filter")
    return last_id
