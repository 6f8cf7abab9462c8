"""What a worker is configured with: `WorkerConfig` (from the command line, every field an option of
`clipsearch_core.settings`), the consumer name it defaults to, and whether decoding overlaps the model."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from clipsearch.connection import Connection
from clipsearch_core.images import LoadLimits
from clipsearch_core.model import ModelSpec

from .thumbs import ThumbnailSpec

__all__ = ["WorkerConfig", "default_consumer_name"]


def default_consumer_name() -> str:
    """host-pid-random: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything an encoder worker needs (each field is the option of the same name, see
    `clipsearch_core.settings`).

    connection: how to reach the search server (address, token, TLS), where vectors are pushed.
    batch_size: images per forward pass (and per Redis read).
    decode_threads: threads that read, decode and preprocess images beside the model (decode_processes 0).
    decode_processes: processes that do so instead (0: the threads), so that decoding uses more cores.
    decode_overlap: "on": the next batch is read and decoded, and the last one pushed, while the model encodes
        this one; "off": only between forward passes (decoding then has every core); "auto": on unless the
        model runs on the CPU with at least one thread per core (`model_threads`), where work beside it only
        slows it down.
    model_threads: the model's CPU threads (torch's default is one per core).
    visibility_timeout_s: a job pending this long with a worker that stopped heartbeating is taken over.
    worker_ttl_s: a worker whose heartbeat is older than this is dead: its jobs are taken over at once.
    """

    redis_url: str
    redis_prefix: str
    connection: Connection
    model: ModelSpec
    batch_size: int
    decode_threads: int
    image_limits: LoadLimits
    consumer: str
    visibility_timeout_s: float
    worker_ttl_s: float
    max_deliveries: int
    heartbeat_file: str  # touched on every loop turn, for container health checks
    device_decode: bool  # decode JPEGs on the model's device (nvJPEG on CUDA)
    decode_stream: bool = True  # ... on a CUDA stream of the decoding thread's own (ClipEncoder.own_decode_stream)
    decode_processes: int = 0
    thumbnail: ThumbnailSpec = ThumbnailSpec()  # the thumbnail sent with each vector (size 0: none)
    decode_overlap: str = "auto"
    model_threads: int = 0
    block_ms: int = 1000
    push_timeout_s: float = 60.0

    @classmethod
    def from_args(cls, args: Any) -> "WorkerConfig":
        """From a command line parsed by `settings.parse("worker", ...)`."""
        return cls(
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            connection=Connection.from_env(args.server, token=args.auth_token or None, tls_ca=args.tls_ca or None,
                                           tls_cert=args.tls_client_cert or None, tls_key=args.tls_client_key or None),
            model=ModelSpec.from_args(args),
            batch_size=args.batch_size,
            decode_threads=args.decode_threads,
            image_limits=LoadLimits.from_args(args),
            consumer=args.consumer or default_consumer_name(),
            visibility_timeout_s=args.visibility_timeout,
            worker_ttl_s=args.worker_ttl,
            max_deliveries=args.max_deliveries,
            heartbeat_file=args.heartbeat_file,
            device_decode=args.device_decode,
            decode_stream=args.decode_stream == "on",
            decode_processes=args.decode_processes,
            thumbnail=ThumbnailSpec.from_args(args),
            decode_overlap=args.decode_overlap,
            model_threads=args.threads or _cores(),
        )

    def overlaps(self, device: str) -> bool:
        """Whether decoding runs beside the model (see decode_overlap)."""
        if self.decode_overlap != "auto":
            return self.decode_overlap == "on"
        return not (device == "cpu" and self.model_threads >= _cores())


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
