"""How the server and the router run as programs: options, logging, signals, exit codes, and listening.

`main` parses a role's declared options (clipsearch_core.settings), sets up logging and runs the
program's `serve` coroutine; a start-up error (a ServiceError such as a refused configuration, or an
OSError such as a port in use) prints `error: ...` and exits 2, Ctrl-C exits 130. `stop_signals`
returns the event that SIGINT and SIGTERM set, which `serve` waits on before a graceful stop.
`listen` adds the health service and reflection to a gRPC server and binds its port (TLS when given).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from pathlib import Path
from typing import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clipsearch_core import settings
from clipsearch_core.errors import ServiceError
from clipsearch_core.logs import setup_logging

from .security import server_credentials

__all__ = ["is_loopback", "listen", "main", "server_options", "stop_signals"]


def main(role: str, argv: Sequence[str] | None, prog: str, description: str,
         serve: Callable[[argparse.Namespace], Awaitable[None]]) -> int:
    """Runs a program until it stops; returns its exit code."""
    args = settings.parse(role, argv, prog, description)
    setup_logging(args.log_level, args.log_format)
    try:
        asyncio.run(serve(args))  # type: ignore[arg-type]
    except (ServiceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def stop_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets (call it inside the running event loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC server options: message size limits, and keepalive that survives load balancers (ping idle
    connections, accept client pings every 20 s, as clients ping every 30 s) with connections recycled
    every 30 min so that new replicas get traffic, letting running calls finish for 30 s."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.http2.max_ping_strikes", 5),
        ("grpc.max_connection_age_ms", 30 * 60_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


def is_loopback(host: str) -> bool:
    """True when `host` (as --host takes it: a name, an address, an IPv6 address in brackets) is loopback only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def listen(server: grpc.aio.Server, services: Sequence[str], host: str, port: int, tls_cert: Path | None = None,
           tls_key: Path | None = None, tls_client_ca: Path | None = None) -> tuple[int, health.HealthServicer]:
    """Adds the health service and reflection (of `services` and those two) to `server` and binds
    host:port, with TLS when a certificate and key are given; returns the bound port and the health
    servicer. OSError when the port cannot be bound."""
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if tls_cert and tls_key:
        bound = server.add_secure_port(address, server_credentials(tls_cert, tls_key, tls_client_ca))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    return bound, health_servicer
