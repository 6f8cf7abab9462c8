"""Server configuration as one small value object, built from the declared options (`clipsearch_core.settings`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from clipsearch_core.errors import InvalidArgument
from clipsearch_core.images import LoadLimits
from clipsearch_core.model import ModelSpec
from clipsearch_core.settings import default
from clipsearch_core.shards import ShardSpec

from .index.kinds import KindOptions, parse_bytes
from .index.vector_index import HnswParams, IndexOptions

__all__ = ["DEFAULT_PORT", "ServerConfig"]

DEFAULT_PORT: int = default("--port")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the search server needs to start (each field is the option of the same name).

    host/port: where gRPC listens (port 0 picks a free one).
    data_dir: where the image store lives.
    redis_url / redis_prefix: the ingestion queue.
    model: the OpenCLIP model (must match the workers').
    hnsw: index parameters.
    image_limits: limits, allowed roots and networks for query images given by uri or bytes.
    max_message_bytes: largest gRPC message accepted or sent.
    text_batch / image_batch: most queries of each kind encoded together in one forward pass.
    threads: torch/FAISS threads for query encoding and search (0: library default).
    snapshot_interval_s: how often the index is snapshotted when it changed (also on shutdown).
    compact_ratio / compact_min: rebuild the graph when this share (and count) of its entries are tombstones.
    filter_exact_max: filtered searches matching at most this many images scan them exactly.
    seal_at: the growing part's size (vectors) at which a background seal moves it into the graph.
    max_queue_jobs / max_queue_bytes: backpressure; SubmitImages fails with RESOURCE_EXHAUSTED beyond.
    grace_s: how long running calls may finish on shutdown.
    auth_token: a write token; tokens_file: scoped read/write tokens (see `api/tokens.py`). Neither: no authentication.
    tls_cert / tls_key: serve TLS with this certificate; tls_client_ca: also require client certificates.
    metrics_port: Prometheus /metrics port (0: off).
    store: the source of truth ('' = SQLite in data_dir, or a postgresql:// URL).
    shard: the part of the collection this server holds.
    max_lag_s / read_wait_s / shared_snapshots: replicas on a PostgreSQL store (health lag bound, how long a
    search with min_position waits, where snapshots are shared: a directory, s3://bucket/prefix, or '').
    kind: the index kind (--index), --memory-budget, --train-min, --nprobe and --rerank (index/kinds.py).
    """

    host: str
    port: int
    data_dir: Path
    redis_url: str
    redis_prefix: str
    model: ModelSpec
    hnsw: HnswParams
    image_limits: LoadLimits
    max_message_bytes: int
    text_batch: int
    image_batch: int
    threads: int
    snapshot_interval_s: float
    compact_ratio: float
    compact_min: int
    filter_exact_max: int
    seal_at: int
    max_queue_jobs: int
    max_queue_bytes: int
    grace_s: float
    auth_token: str
    tokens_file: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    metrics_port: int
    store: str = ""
    shard: ShardSpec = ShardSpec()
    max_lag_s: float = 5.0
    read_wait_s: float = 5.0
    shared_snapshots: str = ""
    kind: KindOptions = KindOptions()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServerConfig":
        """From a command line parsed by `settings.parse("server", ...)`."""
        return cls(
            host=args.host,
            port=args.port,
            data_dir=Path(args.data_dir),
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            model=ModelSpec.from_args(args),
            hnsw=HnswParams(args.hnsw_m, args.ef_construction, args.ef_search),
            image_limits=LoadLimits.from_args(args),
            max_message_bytes=args.max_message_bytes,
            text_batch=args.text_batch,
            image_batch=args.image_batch,
            threads=args.threads,
            snapshot_interval_s=args.snapshot_interval,
            compact_ratio=args.compact_ratio,
            compact_min=args.compact_min,
            filter_exact_max=args.filter_exact_max,
            seal_at=args.seal_at,
            max_queue_jobs=args.max_queue_jobs,
            max_queue_bytes=args.max_queue_bytes,
            grace_s=args.grace,
            auth_token=args.auth_token,
            tokens_file=Path(args.tokens_file) if args.tokens_file else None,
            tls_cert=Path(args.tls_cert) if args.tls_cert else None,
            tls_key=Path(args.tls_key) if args.tls_key else None,
            tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
            metrics_port=args.metrics_port,
            store=args.store,
            shard=ShardSpec.parse(" ".join(args.shard)),  # a list option (the router's --shard is repeated)
            max_lag_s=args.max_lag,
            read_wait_s=args.read_wait,
            shared_snapshots=args.shared_snapshots,
            kind=_kind_options(args),
        )


def _kind_options(args: argparse.Namespace) -> KindOptions:
    try:
        budget = parse_bytes(args.memory_budget)
    except ValueError as exc:
        raise InvalidArgument(f"--memory-budget: {exc}") from None
    if args.train_min < 1 or args.nprobe < 1 or args.rerank < 0:
        raise InvalidArgument("--train-min and --nprobe must be at least 1, --rerank at least 0")
    return KindOptions(args.index, budget, args.train_min, IndexOptions(args.nprobe, args.rerank))
