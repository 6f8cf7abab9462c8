"""How clients and workers reach the server: address, bearer token, TLS, keepalive, retry policy.

One value object (`Connection`) builds sync and asyncio channels with the same settings and the
call metadata (the bearer token), so the Python client, the asyncio client and the encoder workers
connect identically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["DEFAULT_SERVER", "MAX_MESSAGE_BYTES", "Connection"]

DEFAULT_SERVER = "localhost:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Read-only calls, deletes and submissions are idempotent (a submission carries a request id that the
# server deduplicates), so gRPC itself retries them on UNAVAILABLE.
# UpsertVectors (the workers' call) is retried by the worker's own loop instead.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "clipsearch.v1.SearchService"},
                    {"service": "clipsearch.v1.IngestService"},
                    {"service": "clipsearch.v1.RecordService"},
                    {"service": "clipsearch.v1.IndexService", "method": "GetIndexStats"},
                    {"service": "clipsearch.v1.IndexService", "method": "DeleteImages"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

# Pings every 30 s keep idle connections alive through load balancers and NAT; the server allows
# pings every 20 s without data, so these never trigger GOAWAY "too_many_pings".
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def _read(path: str | None) -> bytes | None:
    return Path(path).expanduser().read_bytes() if path else None


@dataclass(frozen=True)
class Connection:
    """Where and how to connect.

    server: "host:port".
    token: bearer token sent as `authorization: Bearer <token>` (the server's CLIPSEARCH_AUTH_TOKEN).
    tls_ca: PEM file of the CA that signed the server certificate; setting it (or tls=True) enables TLS.
    tls_cert / tls_key: client certificate and key, for servers that require mutual TLS.
    tls: use TLS with the system's root certificates when no tls_ca is given.
    """

    server: str = DEFAULT_SERVER
    token: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls: bool = False

    @classmethod
    def from_env(cls, server: str | None = None, **overrides: object) -> "Connection":
        """Settings from CLIPSEARCH_SERVER, CLIPSEARCH_AUTH_TOKEN, CLIPSEARCH_TLS_CA/_CERT/_KEY, then overrides."""
        env = os.environ
        values: dict[str, object] = {
            "server": server or env.get("CLIPSEARCH_SERVER") or DEFAULT_SERVER,
            "token": env.get("CLIPSEARCH_AUTH_TOKEN", ""),
            "tls_ca": env.get("CLIPSEARCH_TLS_CA", ""),
            "tls_cert": env.get("CLIPSEARCH_TLS_CERT", ""),
            "tls_key": env.get("CLIPSEARCH_TLS_KEY", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.tls_ca)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def options(self) -> list[tuple[str, object]]:
        return [
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *_KEEPALIVE,
        ]

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca),
            private_key=_read(self.tls_key),
            certificate_chain=_read(self.tls_cert),
        )

    def channel(self) -> grpc.Channel:
        """A synchronous channel (one per process is enough; it multiplexes calls)."""
        if self.secure:
            return grpc.secure_channel(self.server, self._credentials(), options=self.options())
        return grpc.insecure_channel(self.server, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel with the same settings."""
        if self.secure:
            return grpc.aio.secure_channel(self.server, self._credentials(), options=self.options())
        return grpc.aio.insecure_channel(self.server, options=self.options())
