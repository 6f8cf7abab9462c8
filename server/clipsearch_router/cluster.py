"""The router's view of the search servers: shards, their replicas, replica health, and one call to a shard.

A `ShardReplica` is one search server (host:port) with an asyncio channel and a health state kept by a
background loop (grpc.health.v1 Check every `health_interval_s`; a replica that does not answer
SERVING within the shard timeout is unhealthy until it does). A call that fails with UNAVAILABLE also
marks its replica unhealthy at once.

A `Shard` holds the replicas of one shard. `Shard.call` sends a unary call to one replica, picked
round robin among the healthy ones (a replica not yet checked counts as healthy), and on UNAVAILABLE
tries the next one while the deadline allows. With no healthy replica it fails at once
(`ShardDown`), so a router facing a dead shard answers without waiting for the deadline.
`Shard.call_all` sends it to every replica (writes when each replica has its own store);
`Cluster.call_any` to any one server (calls every server answers alike, e.g. the shared ingestion queue).

Calls carry raw bytes (requests serialized once by the caller), so fields this router does not know
travel unchanged to the servers and back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipsearch_core.errors import InvalidArgument

__all__ = ["Cluster", "Shard", "ShardDown", "ShardReplica", "Upstream", "first_answer", "parse_shards"]

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]


class ShardDown(Exception):
    """No replica answered (none healthy, each UNAVAILABLE, or the deadline passed). `what` names the
    shard (or "the cluster") and its replicas."""

    def __init__(self, what: str, reason: str, index: int = -1) -> None:
        super().__init__(f"{what} {reason}")
        self.index = index


async def first_answer(replicas: Sequence["ShardReplica"], what: str, path: str, request: bytes, timeout: float | None,
                       metadata: Metadata, index: int = -1, mark_down: bool = True) -> bytes:
    """The reply of the first of `replicas` that answers; UNAVAILABLE moves on to the next while time is
    left, and marks the replica unhealthy unless `mark_down` is false (a search waiting for a
    min_position: a replica not caught up yet in --read-wait is UNAVAILABLE for that request only, and
    a client must not be able to take every replica out with an unreachable position). Raises ShardDown
    when none could; any other error of a replica is raised as it came."""
    deadline = None if timeout is None else time.monotonic() + timeout
    tried: list[str] = []
    for replica in replicas:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            return await replica.method(path)(request, timeout=left, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ShardDown(what, f"did not answer within {timeout:.2f}s", index) from exc
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            if mark_down:
                replica.mark(False, f"{path.rsplit('/', 1)[-1]}: UNAVAILABLE: {exc.details()}")
            tried.append(f"{replica.address}: {exc.details()}")
    if not tried:
        raise ShardDown(what, "has no healthy replica" if deadline is None or deadline > time.monotonic()
                        else f"did not answer within {timeout:.2f}s", index)
    raise ShardDown(what, "is unavailable (" + "; ".join(tried) + ")", index)


@dataclass(frozen=True)
class Upstream:
    """How the router connects to the servers: TLS files (all empty: plaintext) and the message limit."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: int = 64 * 1024 * 1024

    def channel(self, address: str) -> grpc.aio.Channel:
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),  # the router itself moves to another replica
        ]
        if self.tls_ca is None:
            return grpc.aio.insecure_channel(address, options=options)
        credentials = grpc.ssl_channel_credentials(
            self.tls_ca.read_bytes(),
            self.tls_key.read_bytes() if self.tls_key else None,
            self.tls_cert.read_bytes() if self.tls_cert else None,
        )
        return grpc.aio.secure_channel(address, credentials, options=options)


class ShardReplica:
    """One search server: its channel and its health as last seen."""

    def __init__(self, address: str, upstream: Upstream) -> None:
        self.address = address
        self.channel = upstream.channel(address)
        self.healthy: bool | None = None  # None: not checked yet (tried like a healthy one)
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    def method(self, path: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """A callable for `path` (/package.Service/Method) taking and returning serialized messages."""
        if path not in self._calls:
            self._calls[path] = self.channel.unary_unary(path)
        return self._calls[path]

    def mark(self, healthy: bool, why: str = "") -> None:
        if healthy != self.healthy:
            log.log(logging.INFO if healthy else logging.WARNING, "replica %s is %s%s", self.address,
                    "healthy" if healthy else "unhealthy", f" ({why})" if why else "")
        self.healthy = healthy

    async def check(self, timeout: float) -> None:
        try:
            reply = await health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(),
                                                                         timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            self.mark(False, f"health check: {exc.code().name}")
            return
        except Exception as exc:  # noqa: BLE001 - the health loop must outlive any one check
            log.exception("health check of %s failed", self.address)
            self.mark(False, f"health check: {exc!r}")
            return
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        self.mark(serving, "" if serving else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class Shard:
    """The replicas of one shard, with round-robin choice and failover."""

    def __init__(self, index: int, replicas: Sequence[ShardReplica]) -> None:
        self.index = index
        self.replicas = list(replicas)
        self._turn = itertools.count()

    def candidates(self) -> list[ShardReplica]:
        """The replicas not known to be unhealthy, starting at the next one in round-robin order."""
        start = next(self._turn) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        return [r for r in rotated if r.healthy is not False]

    @property
    def name(self) -> str:
        return f"shard {self.index} ({', '.join(r.address for r in self.replicas)})"

    async def call(self, path: str, request: bytes, timeout: float | None, metadata: Metadata,
                   mark_down: bool = True) -> bytes:
        """The reply of one replica, with failover (see `first_answer`)."""
        return await first_answer(self.candidates(), self.name, path, request, timeout, metadata, self.index,
                                  mark_down)

    async def call_all(self, path: str, request: bytes, timeout: float | None, metadata: Metadata) -> bytes:
        """Sends the call to every replica (each must succeed); returns the first replica's reply.
        A replica's error is raised as it came (UNAVAILABLE included: the caller retries the whole call)."""
        replies = await asyncio.gather(
            *(r.method(path)(request, timeout=timeout, metadata=metadata) for r in self.replicas))
        return replies[0]


class Cluster:
    """Every shard, in shard order, and the health loop of all their replicas."""

    def __init__(self, shards: Sequence[Sequence[str]], upstream: Upstream, health_interval_s: float,
                 check_timeout_s: float) -> None:
        self.shards = [Shard(i, [ShardReplica(a, upstream) for a in addresses]) for i, addresses in enumerate(shards)]
        self.replicas = [r for shard in self.shards for r in shard.replicas]
        self.health_interval_s = health_interval_s
        self.check_timeout_s = check_timeout_s
        self._any = itertools.count()

    @property
    def count(self) -> int:
        return len(self.shards)

    def any_candidates(self) -> list[ShardReplica]:
        """Every replica not known to be unhealthy, round robin over the whole cluster (for calls any
        server answers alike, e.g. the ingestion queue's, shared through Redis)."""
        start = next(self._any) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        return [r for r in rotated if r.healthy is not False]

    async def call_any(self, path: str, request: bytes, timeout: float | None, metadata: Metadata,
                       mark_down: bool = True) -> bytes:
        """The reply of any one server, with failover (see `first_answer`)."""
        return await first_answer(self.any_candidates(), "every search server", path, request, timeout, metadata,
                                  mark_down=mark_down)

    def reachable(self) -> bool:
        """Whether some replica is not known to be unhealthy."""
        return any(r.healthy is not False for r in self.replicas)

    async def watch(self, after_round: Callable[[], None]) -> None:
        """Checks every replica's health forever, every health_interval_s; calls `after_round` after each round."""
        while True:
            await asyncio.gather(*(r.check(self.check_timeout_s) for r in self.replicas))
            after_round()
            await asyncio.sleep(self.health_interval_s)

    async def close(self) -> None:
        await asyncio.gather(*(r.channel.close() for r in self.replicas))


def parse_shards(values: Sequence[str]) -> list[list[str]]:
    """The router's --shard values (one per shard, replicas comma-separated) as lists of addresses."""
    shards = [[a.strip() for a in value.split(",") if a.strip()] for value in values]
    if not shards or any(not s for s in shards):
        raise InvalidArgument("give one --shard HOST:PORT[,HOST:PORT...] per shard, in shard order (0, 1, ...)")
    seen = [a for s in shards for a in s]
    if len(seen) != len(set(seen)):
        raise InvalidArgument("a server address appears twice among the --shard values")
    return shards
