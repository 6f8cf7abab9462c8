"""The query side of the search planner: pages, batches, weighted multi-term vectors and near-duplicate collapse.

Owns what a query means once it is a vector; the collection (collection/collection.py) owns how candidates are found.
- Order: results follow (score descending, id ascending). Candidates from any plan (graph, growing part,
  exact scan) are re-scored in float64 from the index's stored unit vectors and rounded to float32, so a
  result's score, and hence its place, does not depend on the plan that found it or on the page.
- Pages (clipsearch_core.pages): a page token is a cursor (score, id, results returned so far, query
  fingerprint). A page holds the best k results strictly after the cursor. The search looks
  returned + k (+ spares) deep and widens (doubling, at most MAX_FETCH) until the k-th result is known:
  the candidates fetched go past it, or every reachable image was fetched. Images added between pages
  show up on a later page if they rank after the cursor (never before it); deleted ones disappear;
  nothing shifts. Over the graph plan (more than --filter-exact-max candidates) an image the approximate
  search missed on an earlier page and finds later before the cursor is not shown: never repeated.
- Batches: queries with the same filter are one group; the filter is evaluated once and the group's
  first round is one batched index search (collection.search_many), each query then completed alone.
- Filter results are cached (`LabelCache`, keyed by the filter and the collection's write generation,
  so any write invalidates them): the pages of a query and queries sharing a filter (a tenant, an album)
  evaluate it once. At most CACHE_LABELS labels (8 bytes each) are kept.
- Terms: sum(w_i * v_i) / sum(|w_i|) over unit term vectors, L2-normalized again; a sum with norm
  below MIN_TERMS_NORM is refused.
- Collapse: greedy over the page's candidates in order: a candidate whose cosine with an already kept
  result is >= the threshold joins the best such result's collapsed ids; otherwise it is kept, until k
  are kept and a candidate close to none comes. The next page starts after the last candidate taken, so
  each image is listed once over all pages. It works within a page: a near duplicate of an earlier
  page's result that ranks after a result of another image can show on a later page.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from clipsearch_core import pages
from clipsearch_core.errors import InvalidArgument
from clipsearch_core.pages import Cursor
from clipsearch_server.collection.collection import Collection, Hit

from . import filters
from .filters import Filter

__all__ = ["MAX_FETCH", "MAX_TERMS", "MAX_WEIGHT", "MIN_TERMS_NORM", "LabelCache", "Page", "Query",
           "combine", "filter_key", "run"]

MAX_TERMS = 16  # terms per weighted query
MAX_WEIGHT = 100.0  # |weight| of a term
MIN_TERMS_NORM = 1e-6  # a weighted sum shorter than this has no direction
MAX_FETCH = 2 * pages.MAX_DEPTH + 64  # candidates one query may look at
SPARE = 8  # candidates fetched past the depth, to see past the k-th result and past ties
COLLAPSE_FETCH = 4  # first-round candidates per wanted result when collapsing
TIE_EPS = 1e-6  # score margin within which an unfetched candidate could still tie the k-th result
CACHE_LABELS = 4_000_000  # labels kept by a LabelCache in all (32 MB)


@dataclass(frozen=True)
class Query:
    """One validated query: its unit vector and how to page, filter, threshold and collapse its results."""

    vector: np.ndarray
    k: int
    flt: Filter | None = None
    min_score: float | None = None
    cursor: Cursor | None = None
    fingerprint: str = ""
    exclude: frozenset[str] = frozenset()  # ids left out of the results (the query images)
    collapse: float | None = None


@dataclass(frozen=True)
class Page:
    """A query's results, best first, each with the ids collapsed into it, and the next page's token ("" = last)."""

    hits: list[Hit]
    next_page_token: str
    collapsed: list[list[str]] = field(default_factory=list)


def filter_key(flt: Filter | None) -> bytes:
    """Queries with equal keys share a filter evaluation and a batched search."""
    return filters.key(flt)


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The normalized weighted sum of unit term vectors: sum(w_i * v_i) / sum(|w_i|), L2-normalized."""
    units = np.stack([np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in vectors])
    w = np.asarray(weights, dtype=np.float64)
    total = (w[:, None] * units).sum(axis=0) / np.abs(w).sum()
    norm = float(np.linalg.norm(total))
    if not norm >= MIN_TERMS_NORM:
        raise InvalidArgument(f"the weighted terms cancel out (norm of their weighted sum {norm:.2g} < "
                              f"{MIN_TERMS_NORM}): change the weights or the terms")
    return (total / norm).astype(np.float32)


class LabelCache:
    """The labels matching recent filters, valid for one write generation of a collection."""

    def __init__(self, max_labels: int = CACHE_LABELS) -> None:
        self.max_labels = max_labels
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()
        self._size = 0

    def matching(self, collection: Collection, flt: Filter) -> np.ndarray:
        key = (collection.generation, filter_key(flt))  # read before evaluating: a write meanwhile makes it stale
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        labels = filters.matching_labels(collection.store, flt)
        labels.flags.writeable = False  # shared by the queries that hit the cache
        with self._lock:
            for old in [k for k in self._entries if k[0] < key[0]]:  # a write happened since: stale
                self._size -= len(self._entries.pop(old))
            if key not in self._entries and len(labels) <= self.max_labels:
                self._entries[key] = labels
                self._size += len(labels)
                while self._size > self.max_labels:
                    _, dropped = self._entries.popitem(last=False)
                    self._size -= len(dropped)
        return labels


def run(collection: Collection, queries: Sequence[Query], cache: LabelCache | None = None) -> list[Page]:
    """Answers the queries, in order. Each filter is evaluated once (or taken from `cache`); each group's
    first round is batched."""
    groups: dict[bytes, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(filter_key(q.flt), []).append(i)
    out: list[Page | None] = [None] * len(queries)
    for members in groups.values():
        flt = queries[members[0]].flt
        if flt is None:
            matching = None
        else:
            matching = cache.matching(collection, flt) if cache else filters.matching_labels(collection.store, flt)
        fetch = max(_first_fetch(queries[i]) for i in members)
        rounds = collection.search_many(np.stack([queries[i].vector for i in members]), fetch, matching)
        for i, hits in zip(members, rounds):
            out[i] = _page(collection, queries[i], matching, hits, fetch)
    return [page for page in out if page is not None]


def _first_fetch(q: Query) -> int:
    depth = (q.cursor.returned if q.cursor else 0) + q.k
    return min(depth * (COLLAPSE_FETCH if q.collapse is not None else 1) + len(q.exclude) + SPARE, MAX_FETCH)


def _page(collection: Collection, q: Query, matching: np.ndarray | None, hits: list[Hit], fetch: int) -> Page:
    """Cuts the page out of the candidates, widening the search until the page is certain."""
    unit = np.asarray(q.vector, dtype=np.float64)
    unit /= np.linalg.norm(unit)
    while True:
        exhausted = len(hits) < fetch or fetch >= MAX_FETCH
        candidates = _rescored(collection, hits, unit)
        page, certain = _cut(q, candidates, exhausted)
        if certain:
            return page
        fetch = min(fetch * 2, MAX_FETCH)
        hits = collection.search_many(q.vector[None, :], fetch, matching)[0]


def _rescored(collection: Collection, hits: list[Hit], unit: np.ndarray) -> list[tuple[Hit, np.ndarray]]:
    """The hits with plan-independent scores and their unit vectors, in (score desc, id asc) order."""
    if not hits:
        return []
    labels, vectors = collection.vectors_of(np.array([h.label for h in hits], dtype=np.int64))
    by_label = {int(label): row for label, row in zip(labels, vectors)}
    out = []
    for hit in hits:
        vector = by_label.get(hit.label)
        if vector is None:  # removed from the index since (e.g. a compaction): it is gone
            continue
        score = float(np.float32(np.dot(vector.astype(np.float64), unit)))
        out.append((Hit(hit.id, score, hit.uri, hit.metadata, hit.fields, hit.label), vector))
    out.sort(key=lambda pair: (-pair[0].score, pair[0].id))
    return out


def _cut(q: Query, candidates: list[tuple[Hit, np.ndarray]], exhausted: bool) -> tuple[Page, bool]:
    """The page and whether it is certain: false when an unfetched candidate could still belong to it."""
    kept: list[Hit] = []
    kept_vectors = np.empty((q.k, len(q.vector)), dtype=np.float32)  # rows [:len(kept)] are in use
    collapsed: list[list[str]] = []
    last: Hit | None = None  # the last candidate the page took (kept, or folded into a kept one): the cursor
    more = below = False
    for hit, vector in candidates:
        if hit.id in q.exclude or not _after(hit, q.cursor):
            continue
        if q.min_score is not None and hit.score < q.min_score:
            below = True  # candidates are in score order: none further reaches min_score
            break
        if q.collapse is not None and kept:
            close = kept_vectors[:len(kept)] @ vector >= q.collapse
            if close.any():  # joins the best kept result it is close to (also once the page is full)
                collapsed[int(np.argmax(close))].append(hit.id)
                last = hit
                continue
        if len(kept) == q.k:
            more = True
            break
        kept_vectors[len(kept)] = vector
        kept.append(hit)
        collapsed.append([])
        last = hit
    last_fetched = candidates[-1][0].score if candidates else -math.inf
    if len(kept) == q.k:
        floor = kept[-1].score
    else:
        floor = q.min_score if q.min_score is not None else -math.inf
    certain = exhausted or last_fetched < floor - TIE_EPS
    returned = (q.cursor.returned if q.cursor else 0) + len(kept)
    token = pages.next_token(last.score, last.id, returned, q.fingerprint,  # after what this page listed
                             more or not (exhausted or below)) if len(kept) == q.k and last is not None else ""
    return Page(kept, token, collapsed), certain


def _after(hit: Hit, cursor: Cursor | None) -> bool:
    return cursor is None or (hit.id != cursor.id and pages.after(hit.score, hit.id, cursor))
