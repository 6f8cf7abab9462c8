"""Server assembly and lifecycle: `create_server()` wires the parts, `serve()` runs until SIGTERM/SIGINT
(SIGHUP reloads the tokens file).

The port opens at once, with the standard health service reporting NOT_SERVING (and the clipsearch
services answering UNAVAILABLE) while the model and the index load; then SERVING. A background
task snapshots the index when it changed. Shutdown: NOT_SERVING, drain calls for `grace_s`, write a
final snapshot.

With `--store postgresql://...` (replication/follower.py) start-up also binds to the shared collection, catches the
local mirror up, and copies the latest shared snapshot into an empty data directory before the index
loads; afterwards health follows the lag: SERVING while this server is behind the store for at
most `max_lag_s`, NOT_SERVING beyond (load balancers skip it), checked every HEALTH_PERIOD_S.
Snapshots are published to `--shared-snapshots` (a directory or s3://bucket/prefix) when set.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from clipsearch_core import heap, jobqueue
from clipsearch_core.model import load_encoder

from .api import program
from .api.boundary import MalformedRequests
from .api.metrics import RPCS, serve_metrics
from .api.security import BearerTokenInterceptor
from .api.servicers import SERVICE_NAMES, add_servicers
from .api.tokens import TokenStore
from .collection.collection import Collection
from .config import ServerConfig
from .index import vector_index as index_module
from .index.snapshot_share import SnapshotShare, share_for
from .ingest.ingestor import Ingestor
from .replication.follower import StoreFollower
from .search.engine import Engine, EngineSlot
from .storage.postgres import PgStore
from .storage.sqlite import SqliteStore

__all__ = ["RunningServer", "create_server", "serve"]

log = logging.getLogger(__name__)

HEALTH_PERIOD_S = 0.25

@dataclass
class RunningServer:
    """A started server and what it owns."""

    server: grpc.aio.Server
    port: int
    slot: EngineSlot
    health: HealthServicer
    config: ServerConfig
    tokens: TokenStore | None
    _tasks: list[asyncio.Task]
    _share: SnapshotShare | None = None

    async def ready(self) -> Engine:
        """Waits until the model and index are loaded (re-raises a start-up failure)."""
        await self._tasks[0]
        return self.slot.get()

    def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Stops accepting calls, lets running ones finish for `grace` seconds, snapshots, releases resources."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for task in self._tasks[1:]:
            task.cancel()
        await self.server.stop(grace)
        engine = self.slot.engine
        if engine is not None:
            await asyncio.to_thread(self._snapshot, engine)
            await engine.aclose()

    def _snapshot(self, engine: Engine) -> None:
        """Snapshots the index, and publishes it to the shared snapshots (if any)."""
        engine.collection.snapshot()
        if self._share is not None:
            try:
                self._share.publish(self.config.data_dir)
            except Exception:  # noqa: BLE001 - the local snapshot is written; the next period tries again
                log.exception("publishing the snapshot to %s failed", self.config.shared_snapshots)

    async def _load(self) -> None:
        config = self.config
        encoder = await asyncio.to_thread(load_encoder, config.model, config.threads or None)
        # the model's objects join the imports' out of the collector's reach; what the store and index
        # loading make below is collected as usual (clipsearch_core.heap)
        frozen = heap.freeze()
        # full query batches once before serving (on a GPU: kernels loaded, memory grown), beside the
        # store and index loading (warm_up logs its failures, it does not raise)
        warming = asyncio.ensure_future(asyncio.to_thread(encoder.warm_up, config.image_batch, config.text_batch))
        replica = await asyncio.to_thread(self._replica, encoder.identity, encoder.dim) if config.store else None
        collection = await asyncio.to_thread(
            Collection, config.data_dir, encoder.identity, encoder.dim, config.hnsw,
            config.compact_ratio, config.compact_min, config.filter_exact_max, config.seal_at,
            replica.mirror if replica is not None else None, shard=config.shard, kind=config.kind,
        )
        warm = await warming
        engine = Engine(encoder, collection, config.image_limits, text_batch=config.text_batch,
                        image_batch=config.image_batch)
        engine.read_wait_s = config.read_wait_s
        if replica is not None:
            replica.start(collection)
            engine.replica = replica
        self.slot.engine = engine
        if replica is None:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
        else:
            self._tasks.append(asyncio.create_task(self._follow_lag(replica)))
        log.info("serving on port %d (model %s, %d images; warmed up in %.2f s; %d start-up objects frozen)",
                 self.port, encoder.identity, collection.stats().count, warm, frozen)
        self._tasks.append(asyncio.create_task(self._snapshots()))

    def _replica(self, model: str, dim: int) -> StoreFollower:
        """Connects to the shared store and brings this server's local mirror up to its head."""
        config = self.config
        pg = PgStore(config.store)
        replica = StoreFollower(pg, SqliteStore(config.data_dir / "images.sqlite3"), config.shard)
        try:
            replica.prepare(model, dim, config.kind.kind)
            if config.shared_snapshots:
                self._share = share_for(config.shared_snapshots, pg.collection_id, config.shard)
                self._share.fetch(config.data_dir)  # an empty data directory starts from the latest one
        except BaseException:
            replica.close()
            raise
        return replica

    async def _follow_lag(self, replica: StoreFollower) -> None:
        """SERVING while caught up within max_lag_s, NOT_SERVING otherwise."""
        serving: bool | None = None
        while True:
            now = replica.lag_s() <= self.config.max_lag_s
            if now != serving:
                serving = now
                self._set_health(health_pb2.HealthCheckResponse.SERVING if now
                                 else health_pb2.HealthCheckResponse.NOT_SERVING)
                log.info("health: %s (applied position %d, store %d)", "SERVING" if now else "NOT_SERVING",
                         replica.applied, replica.head)
            await asyncio.sleep(HEALTH_PERIOD_S)

    async def _snapshots(self) -> None:
        engine = self.slot.get()
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            try:
                await asyncio.to_thread(self._snapshot, engine)
            except Exception:  # noqa: BLE001 - keep serving; the store stays the source of truth
                log.exception("snapshot failed")


async def create_server(config: ServerConfig) -> RunningServer:
    """Binds the port and starts serving at once; the model and index load in the background
    (health NOT_SERVING until `ready()`)."""
    if config.threads:
        index_module.set_threads(config.threads)
    slot = EngineSlot()
    ingestor = Ingestor(
        jobqueue.connect(config.redis_url), jobqueue.Keys(config.redis_prefix), config.max_queue_jobs,
        config.max_queue_bytes,
    )

    options = program.server_options(config.max_message_bytes)
    # first: it guards whatever handler the others pick (unparseable requests: INVALID_ARGUMENT, api/boundary.py)
    interceptors: list[grpc.aio.ServerInterceptor] = [MalformedRequests(SERVICE_NAMES)]
    tokens = None
    if config.auth_token or config.tokens_file:
        tokens = TokenStore(config.tokens_file, config.auth_token)  # a bad tokens file fails start-up here
        interceptors.append(BearerTokenInterceptor(
            tokens, lambda method, code: RPCS.labels(method.rsplit("/", 1)[-1], code.name).inc()))
    server = grpc.aio.server(options=options, interceptors=interceptors)
    add_servicers(server, slot, ingestor, config.image_limits.max_bytes)
    port, health_servicer = program.listen(server, SERVICE_NAMES, config.host, config.port, config.tls_cert,
                                           config.tls_key, config.tls_client_ca)
    if config.metrics_port:
        serve_metrics(config.metrics_port, [lambda: _index_gauges(slot), lambda: _queue_gauges(ingestor.queue)])
    running = RunningServer(server, port, slot, health_servicer, config, tokens, [])
    running._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    running._tasks.append(asyncio.create_task(running._load()))
    return running


def _index_gauges(slot: EngineSlot) -> dict[str, float]:
    if slot.engine is None:
        return {}
    stats = slot.engine.collection.stats()
    gauges: dict[str, float] = {"index_images": stats.count, "index_tombstones": stats.stale_entries,
              "index_entries": slot.engine.collection.index.ntotal}
    replica = slot.engine.replica
    if replica is not None:  # a replica of a PostgreSQL store
        gauges.update(replica_lag_seconds=replica.lag_s(), replica_applied_position=replica.applied,
                      replica_store_position=replica.head)
    return gauges


def _queue_gauges(queue: jobqueue.JobQueue) -> dict[str, float]:
    s = queue.status()
    progress = queue.progress()
    return {"queue_jobs": s.jobs, "queue_pending": s.in_flight, "queue_lag": s.lag, "queue_bytes": s.queued_bytes,
            "workers_alive": sum(w.alive for w in s.workers), "ingest_failed": progress.failed if progress else 0}


async def serve(config: ServerConfig) -> None:
    """Runs the server until SIGINT or SIGTERM, then drains gracefully."""
    running = await create_server(config)
    print(f"clipsearch server listening on port {running.port} (loading)", flush=True)
    if running.tokens is None and not program.is_loopback(config.host):
        log.warning("no token is required (--auth-token, --tokens-file) and the server listens on %s: anyone who can "
                    "reach port %d can search, add and delete images; set CLIPSEARCH_AUTH_TOKEN or listen on "
                    "--host 127.0.0.1", config.host, running.port)
    stop = program.stop_signals()
    if running.tokens is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, running.tokens.reload)
    loader = running._tasks[0]
    await asyncio.wait([loader, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if loader.done() and loader.exception() is not None:
        await running.stop(0)
        raise loader.exception()  # type: ignore[misc]
    await stop.wait()
    log.info("shutting down (grace %.1fs)", config.grace_s)
    await running.stop(config.grace_s)
