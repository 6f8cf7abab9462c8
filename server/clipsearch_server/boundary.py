"""The API boundary shared by the search server's and the router's servicers: exceptions to gRPC statuses.

`boundary(translate)` wraps a handler so that a known domain error (errors.status_for) aborts the call
with its status and message (a ResourceExhausted with retry_after_s also sets the "retry-after-ms"
trailing metadata), `translate` maps errors particular to one front (the router's upstream errors),
and anything else becomes INTERNAL with a request id that is logged with the traceback and shown to the
caller instead of internals. Every call is counted and timed by method and status (metrics.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from .errors import ResourceExhausted, status_for
from .metrics import RPC_LATENCY, RPCS

__all__ = ["Translate", "boundary"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]
# (exception, context) -> (status, message) for errors a front knows beyond the domain table, else None.
Translate = Callable[[Exception, grpc.aio.ServicerContext], "tuple[grpc.StatusCode, str] | None"]


def _domain(exc: Exception, context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
    code = status_for(exc)
    if code is None:
        return None
    if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
        context.set_trailing_metadata((("retry-after-ms", str(int(exc.retry_after_s * 1000))),))
    return code, str(exc)


def boundary(translate: Translate | None = None) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """The decorator of a front's handlers (see the module docstring)."""

    def decorate(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
        name = method.__name__

        @functools.wraps(method)
        async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await method(self, request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the caller cancelled or its deadline passed
                raise
            except Exception as exc:  # noqa: BLE001 - this is the boundary
                known = (translate(exc, context) if translate is not None else None) or _domain(exc, context)
                if known is not None:
                    code = known[0]
                    await context.abort(code, known[1])
                code = grpc.StatusCode.INTERNAL
                request_id = uuid.uuid4().hex[:16]
                log.exception("internal error in %s (request id %s)", name, request_id)
                await context.abort(code, f"internal error (request id {request_id})")
            finally:
                RPCS.labels(name, code.name).inc()
                RPC_LATENCY.labels(name, code.name).observe(time.perf_counter() - started)
            raise AssertionError("unreachable")

        return wrapper

    return decorate
