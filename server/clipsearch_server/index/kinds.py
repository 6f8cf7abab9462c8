"""Index kinds: what `--index` names, which faiss spec serves a collection of a given size, when the index
is (re)trained, and what `--index auto` picks from `--memory-budget`. Pure rules, no faiss (vector_index.py
builds and validates the specs).

- hnsw      HNSW{M},Flat: exact vectors in the graph, 4d + 8M + 16 bytes per vector in RAM; no training.
- hnsw-sq8  HNSW{M},SQ8: 1 byte per dimension + links (d + 8M + 16 B), exact vectors on disk for re-ranking.
- ivf-pq    IVF{nlist}_HNSW32,PQ{d/8}np: 8-bit PQ codes (np: no polysemous training, which is slow) (d/8 B) + id
            (8 B) in RAM, an HNSW coarse quantizer over nlist centroids, candidates re-ranked with exact vectors
            read through mmap; real deletes. nlist = the power of two nearest sqrt(n), at most n / 39 (faiss'
            points per centroid). Not fast-scan (PQ..x4fs): faiss 1.15 corrupts fast-scan lists that get vectors
            added after a remove_ids, so a fast-scan factory string keeps tombstones instead.
- auto      plans for twice the current size (at least --train-min) and takes the first of hnsw,
            hnsw-sq8, ivf-pq whose bytes per vector fit --memory-budget (ivf-pq when none does), like
            autofaiss; it chooses again at every rebuild, and rebuilds when the choice changes.
- anything else is a faiss index_factory string, used as given (inner product).
Kinds that need training are served by an exact "Flat" index until the collection holds --train-min
vectors, then trained in the background; retrained when the collection has grown RETRAIN_GROWTH times
past the size it was trained for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from clipsearch_core.settings import default

from .vector_index import IndexOptions

__all__ = [
    "Choice", "IndexReport", "KindOptions", "RETRAIN_GROWTH", "choose", "family", "parse_bytes", "rebuild_reason",
]

NAMED = ("hnsw", "hnsw-sq8", "ivf-pq")
PQ_TRAIN_MIN = 256  # 8-bit PQ trains 256 centroids per sub-quantizer: at least that many vectors
RETRAIN_GROWTH = 10  # retrain once the collection holds this many times the vectors the index was trained for
EXACT = "Flat"  # the spec that serves a collection too small to train
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'8GiB', '512MB', '1.5TB', '1000000' -> bytes. Raises ValueError with the accepted forms."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"memory budget {text!r} is not a size: use e.g. 512MiB, 8GiB, 1.5TB or a byte count")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class KindOptions:
    """--index, --memory-budget (bytes), --train-min, and the search options of the compressed kinds."""

    kind: str = default("--index")
    memory_budget: int = parse_bytes(default("--memory-budget"))
    train_min: int = default("--train-min")
    search: IndexOptions = field(default_factory=IndexOptions)


@dataclass(frozen=True)
class Choice:
    """The spec that should serve a collection now, and why (for `GetIndexStats`)."""

    spec: str
    why: str


@dataclass(frozen=True)
class IndexReport:
    """What `GetIndexStats` says about the index (fields 8-19 of its response)."""

    kind: str
    spec: str
    nlist: int
    nprobe: int
    rerank: int
    memory_bytes: int
    disk_bytes: int
    bytes_per_vector: float
    training: str  # "not-needed", "waiting-for-data", "training", "trained"
    trained_on: int
    train_min: int
    choice: str


def nlist_for(n: int) -> int:
    """IVF lists for n vectors: the power of two nearest sqrt(n), at most n / 39, from 1 to 65,536.
    (autofaiss takes 4-16 sqrt(n); re-ranking tolerates longer lists, and training stays affordable.)"""
    nearest = 2 ** round(math.log2(max(math.sqrt(max(n, 1)), 1)))
    trainable = 2 ** int(math.log2(max(n // 39, 1)))
    return max(1, min(nearest, trainable, 65_536))


def pq_m_for(dim: int) -> int:
    """PQ sub-quantizers (bytes per code): one per 8 dimensions, a divisor of dim."""
    return next(m for m in range(max(dim // 8, 1), 0, -1) if dim % m == 0)


def bytes_per_vector(kind: str, dim: int, m: int, n: int) -> float:
    """RAM per vector of a named kind at n vectors (the formulas auto uses; GetIndexStats measures)."""
    if kind == "hnsw":
        return 4 * dim + 8 * m + 16
    if kind == "hnsw-sq8":
        return dim + 8 * m + 16
    nlist = nlist_for(n)
    return pq_m_for(dim) + 8 + 1 + nlist * (4 * dim + 8 * 32) / max(n, 1)


def spec_of(kind: str, dim: int, m: int, n: int) -> str:
    """The faiss spec of a named kind (or the factory string itself) for a collection of n vectors."""
    if kind == "hnsw":
        return f"HNSW{m},Flat"
    if kind == "hnsw-sq8":
        return f"HNSW{m},SQ8"
    if kind == "ivf-pq":
        return f"IVF{nlist_for(n)}_HNSW32,PQ{pq_m_for(dim)}np"
    return kind


def choose(options: KindOptions, n: int, dim: int, m: int) -> Choice:
    """The spec for a collection of n vectors (before the exact phase: see `serving_spec`)."""
    if options.kind != "auto":
        return Choice(spec_of(options.kind, dim, m, n), f"--index {options.kind}")
    plan = 2 * max(n, options.train_min)
    for kind in NAMED:
        need = bytes_per_vector(kind, dim, m, plan)
        if need * plan <= options.memory_budget:
            return Choice(spec_of(kind, dim, m, n),
                          f"auto: {kind} needs {need:.0f} B/vector x {plan} planned vectors = "
                          f"{_size(need * plan)} <= budget {_size(options.memory_budget)}")
    need = bytes_per_vector("ivf-pq", dim, m, plan)
    return Choice(spec_of("ivf-pq", dim, m, n),
                  f"auto: nothing fits the budget {_size(options.memory_budget)} for {plan} planned vectors; "
                  f"ivf-pq, the smallest, needs {_size(need * plan)}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def train_sample_for(spec: str, cap: int) -> int:
    """Vectors to train `spec` on: `cap`, or 40 per IVF list when that is more (faiss wants 39)."""
    match = re.search(r"IVF(\d+)", spec)
    return max(cap, 40 * int(match.group(1))) if match else cap


def train_min_for(options: KindOptions, spec: str) -> int:
    """Vectors needed before `spec` is trained: --train-min, and at least PQ_TRAIN_MIN for ivf-pq."""
    return max(options.train_min, PQ_TRAIN_MIN) if family(spec) == "ivf-pq" else options.train_min


def family(spec: str) -> str:
    """The named kind a spec belongs to ('flat' for the exact phase, 'factory' for any other string)."""
    if spec == EXACT:
        return "flat"
    if re.fullmatch(r"HNSW\d+,Flat", spec):
        return "hnsw"
    if re.fullmatch(r"HNSW\d+,SQ8", spec):
        return "hnsw-sq8"
    if re.fullmatch(r"IVF\d+_HNSW32,PQ\d+np", spec):
        return "ivf-pq"
    return "factory"


def rebuild_reason(options: KindOptions, current_spec: str, trained_on: int, live: int, target: str) -> str | None:
    """Why the index serving `current_spec` should be rebuilt for `live` vectors (None: it should not).
    The exact phase ends at --train-min; a trained index is retrained after RETRAIN_GROWTH x growth;
    auto switches kind when its choice changes."""
    if current_spec == EXACT != target and live >= train_min_for(options, target):
        return "training"
    if trained_on and live >= RETRAIN_GROWTH * trained_on:
        return "retraining"
    if options.kind == "auto" and current_spec != EXACT and family(current_spec) != family(target):
        return "auto switch"
    return None
