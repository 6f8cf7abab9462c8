"""Authentication, authorization and transport security: the scoped bearer-token interceptor, the
method-to-scope table, and TLS server credentials.

With tokens configured (see `tokens.py`), every call to the clipsearch services must carry
`authorization: Bearer <token>`, or it ends with UNAUTHENTICATED before any handler runs; a token whose
scope does not cover the method ends with PERMISSION_DENIED. The health service (for load balancer and
orchestrator probes) and server reflection (the schema is the public proto) stay open.

Scopes: every method of the four services is listed in READ_METHODS or WRITE_METHODS; a method in
neither (a new RPC nobody classified) needs the write scope, so authorization fails closed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Awaitable, Callable

import grpc

from clipsearch.v1 import index_service_pb2, ingest_service_pb2, record_service_pb2, search_service_pb2

from .tokens import READ, WRITE, TokenStore, scope_allows

__all__ = [
    "OPEN_METHOD_PREFIXES",
    "SERVICES",
    "SERVICE_NAMES",
    "READ_METHODS",
    "WRITE_METHODS",
    "BearerTokenInterceptor",
    "method_scopes",
    "required_scope",
    "server_credentials",
]

log = logging.getLogger(__name__)

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Methods a read token may call (searches, reading records, statistics, progress), and methods that change state.
READ_METHODS = frozenset({
    "TextSearch", "ImageSearch", "BatchSearch", "GetThumbnails", "GetIndexStats", "GetIngestProgress", "ListFailures",
    "GetQueueStatus", "GetRecords", "CountRecords", "ScrollRecords", "Embed",
})
WRITE_METHODS = frozenset({"SubmitImages", "UpsertVectors", "DeleteImages", "RetryFailures", "UpdateRecords",
                           "DeleteRecords"})

SERVICES = (
    search_service_pb2.DESCRIPTOR.services_by_name["SearchService"],
    ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"],
    index_service_pb2.DESCRIPTOR.services_by_name["IndexService"],
    record_service_pb2.DESCRIPTOR.services_by_name["RecordService"],
)
# Their full names: what servers and the router serve (health, reflection, the malformed-request guard).
# The one list of the API's services: a new service is added here.
SERVICE_NAMES = tuple(service.full_name for service in SERVICES)


def method_scopes() -> dict[str, str]:
    """Full method path ("/clipsearch.v1.SearchService/TextSearch") -> the scope it needs, for every
    method of the services; a method not in READ_METHODS needs write."""
    return {
        f"/{service.full_name}/{method.name}": READ if method.name in READ_METHODS else WRITE
        for service in SERVICES
        for method in service.methods
    }


_SCOPES = method_scopes()


def required_scope(method: str) -> str:
    """The scope a call to `method` (a full method path) needs; write for anything unknown."""
    return _SCOPES.get(method, WRITE)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a known bearer token (UNAUTHENTICATED) or whose token's scope does not
    cover the method (PERMISSION_DENIED). `on_reject(method, code)` counts rejections."""

    def __init__(self, tokens: TokenStore,
                 on_reject: Callable[[str, grpc.StatusCode], None] | None = None) -> None:
        self._tokens = tokens
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(details)
        self._tokens.maybe_reload()
        given = next((v for k, v in details.invocation_metadata or () if k == "authorization"), "")
        given_bytes = given.encode() if isinstance(given, str) else given
        token = None
        scheme, _, credentials = given_bytes.partition(b" ")
        if scheme.lower() == b"bearer":  # the scheme is case-insensitive (RFC 7235 section 2.1)
            token = self._tokens.lookup(credentials.strip(b" "))
        name = method.rsplit("/", 1)[-1]
        if token is None:
            problem = "missing bearer token" if not given_bytes else "invalid bearer token"
            return self._reject(method, grpc.StatusCode.UNAUTHENTICATED,
                                f"{problem}: send metadata 'authorization: Bearer <token>' (CLIPSEARCH_AUTH_TOKEN)")
        needed = required_scope(method)
        if not scope_allows(token.scope, needed):
            log.info("permission denied: %s needs %s, token %r has %s", name, needed, token.name, token.scope)
            return self._reject(method, grpc.StatusCode.PERMISSION_DENIED,
                                f"this call ({name}) needs a token with the {needed} scope; "
                                f"the token presented has {token.scope}")
        return await continuation(details)

    def _reject(self, method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        if self._on_reject:
            self._on_reject(method, code)

        async def reject(request: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(reject)


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `client_ca`, clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
