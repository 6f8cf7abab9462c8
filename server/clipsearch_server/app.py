"""Server assembly and lifecycle: `create_server()` wires the parts, `serve()` runs until SIGTERM/SIGINT.

Start-up loads the model and the collection, then registers the three clipsearch services, the
standard health service (SERVING once searches can be answered) and server reflection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clipsearch.v1 import (
    index_service_pb2,
    index_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
)
from clipsearch_worker import queue
from clipsearch_worker.encoder import load_encoder

from . import index as index_module
from .collection import Collection
from .config import ServerConfig
from .engine import Engine
from .ingest import Ingestor
from .service import IndexServicer, IngestServicer, SearchServicer

__all__ = ["RunningServer", "create_server", "serve"]

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (search_service_pb2, "SearchService"),
        (ingest_service_pb2, "IngestService"),
        (index_service_pb2, "IndexService"),
    )
)


@dataclass
class RunningServer:
    """A started server and what it owns."""

    server: grpc.aio.Server
    port: int
    engine: Engine
    health: health.HealthServicer

    async def stop(self, grace: float) -> None:
        """Stops accepting calls, lets running ones finish for `grace` seconds, then releases resources."""
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
        self.engine.close()


async def create_server(config: ServerConfig) -> RunningServer:
    """Loads the model and index, binds the port and starts serving."""
    if config.threads:
        index_module.set_threads(config.threads)
    encoder = await asyncio.to_thread(load_encoder, config.model, config.threads or None)
    collection = await asyncio.to_thread(
        Collection, config.data_dir, encoder.identity, encoder.dim, config.hnsw
    )
    engine = Engine(encoder, collection, config.image_limits)
    ingestor = Ingestor(queue.connect(config.redis_url), queue.Keys(config.redis_prefix))

    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    search_service_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(engine), server)
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
        IngestServicer(ingestor, config.image_limits.max_bytes), server
    )
    index_service_pb2_grpc.add_IndexServiceServicer_to_server(IndexServicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving on port %d (model %s, %d images)", port, encoder.identity, collection.stats().count)
    return RunningServer(server, port, engine, health_servicer)


async def serve(config: ServerConfig) -> None:
    """Runs the server until SIGINT or SIGTERM, then drains gracefully."""
    running = await create_server(config)
    print(f"clipsearch server listening on port {running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", config.grace_s)
    await running.stop(config.grace_s)
