"""Prometheus metrics of the search server and the router: RPCs by method and status, latency, index and
queue size; the router's partial results and replica health.

Exposed over HTTP on --metrics-port (0 disables). Queue figures are read from Redis at scrape time.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PARTIAL", "RPC_LATENCY", "RPCS", "StateCollector", "serve_metrics"]

log = logging.getLogger(__name__)

RPCS = Counter("clipsearch_rpc_total", "RPCs handled, by method and gRPC status code", ["method", "code"])
RPC_LATENCY = Histogram(
    "clipsearch_rpc_seconds",
    "RPC handling time in seconds, by method and gRPC status code",
    ["method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

PARTIAL = Counter("clipsearch_router_partial_total", "Router searches answered without some shard, by shard index",
                  ["shard"])


class StateCollector(Collector):
    """Gauges computed at scrape time from callbacks that return {name: value}."""

    def __init__(self, sources: Iterable[Callable[[], dict[str, float]]]) -> None:
        self._sources = list(sources)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values: dict[str, float] = {}
        for source in self._sources:
            try:
                values.update(source())
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail because Redis is down
                log.debug("metrics source failed: %s", exc)
        for name, value in sorted(values.items()):
            family = GaugeMetricFamily(f"clipsearch_{name}", _HELP.get(name, name))
            family.add_metric([], value)
            yield family


_HELP = {
    "index_images": "Images searchable now",
    "index_entries": "Entries in the HNSW graph, including tombstones",
    "index_tombstones": "Graph entries of replaced or deleted images, removed by compaction",
    "queue_jobs": "Jobs in the queue (not yet finished)",
    "queue_pending": "Jobs delivered to a worker and not yet finished",
    "queue_lag": "Jobs not yet delivered to any worker",
    "queue_bytes": "Inline image bytes held in Redis by queued jobs",
    "workers_alive": "Encoder workers that sent a heartbeat recently",
    "ingest_failed": "Images that failed to index (total)",
    "replica_lag_seconds": "Seconds this replica has been behind the PostgreSQL store's newest change (0: caught up)",
    "replica_applied_position": "Store position this replica has applied (every change below it is searchable)",
    "replica_store_position": "Newest committed store position this replica knows of",
    "router_replicas_healthy": "Router: replicas whose last health check said SERVING",
    "router_shards_reachable": "Router: shards with at least one replica not known to be unhealthy",
}


def serve_metrics(port: int, sources: Iterable[Callable[[], dict[str, float]]]) -> None:
    """Registers the state gauges and starts the /metrics HTTP endpoint on `port`."""
    REGISTRY.register(StateCollector(sources))
    start_http_server(port)
    log.info("metrics on http://0.0.0.0:%d/metrics", port)
