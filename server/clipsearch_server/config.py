"""Server configuration as one small value object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipsearch_worker.encoder import ModelSpec
from clipsearch_worker.images import LoadLimits

from .index import HnswParams

__all__ = ["DEFAULT_PORT", "ServerConfig"]

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class ServerConfig:
    """Everything the search server needs to start.

    host/port: where gRPC listens (port 0 picks a free one).
    data_dir: where the image store lives.
    redis_url / redis_prefix: the ingestion queue.
    model: the OpenCLIP model (must match the workers').
    hnsw: index parameters.
    image_limits: limits and allowed roots for query images given by uri or bytes.
    max_message_bytes: largest gRPC message accepted or sent.
    threads: torch/FAISS threads for query encoding and search (0: library default).
    snapshot_interval_s: how often the index is snapshotted when it changed (also on shutdown).
    compact_ratio: rebuild the graph when this share of its entries are tombstones.
    max_queue_jobs / max_queue_bytes: backpressure; SubmitImages fails with RESOURCE_EXHAUSTED beyond.
    grace_s: how long running calls may finish on shutdown.
    auth_token: when set, every clipsearch call needs `authorization: Bearer <token>` (health stays open).
    tls_cert / tls_key: serve TLS with this certificate; tls_client_ca: also require client certificates.
    metrics_port: Prometheus /metrics port (0: off).
    """

    host: str = "[::]"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("clipsearch-data")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "clipsearch"
    model: ModelSpec = field(default_factory=ModelSpec)
    hnsw: HnswParams = field(default_factory=HnswParams)
    image_limits: LoadLimits = field(default_factory=LoadLimits)
    max_message_bytes: int = 64 * 1024 * 1024
    threads: int = 0
    snapshot_interval_s: float = 60.0
    compact_ratio: float = 0.2
    compact_min: int = 1000
    max_queue_jobs: int = 1_000_000
    max_queue_bytes: int = 2 * 1024**3
    grace_s: float = 10.0
    auth_token: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int = 0
