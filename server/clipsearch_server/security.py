"""Authentication and transport security: the bearer-token interceptor and TLS server credentials.

With a token configured, every call to the clipsearch services must carry
`authorization: Bearer <token>`, or it ends with UNAUTHENTICATED before any handler runs. The
health service (for load balancer and orchestrator probes) and server reflection (the schema is the
public proto) stay open.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Awaitable, Callable

import grpc

__all__ = ["OPEN_METHOD_PREFIXES", "BearerTokenInterceptor", "server_credentials"]

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without the right bearer token (constant-time comparison)."""

    def __init__(self, token: str, on_reject: Callable[[str], None] | None = None) -> None:
        if not token:
            raise ValueError("empty auth token")
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(details)
        given = next((v for k, v in details.invocation_metadata or () if k == "authorization"), "")
        given_bytes = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given_bytes, self._expected):
            return await continuation(details)
        message = "missing bearer token" if not given else "invalid bearer token"
        if self._on_reject:
            self._on_reject(method)

        async def reject(request: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{message}: send metadata 'authorization: Bearer <token>' (CLIPSEARCH_AUTH_TOKEN)",
            )

        return grpc.unary_unary_rpc_method_handler(reject)


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `client_ca`, clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
