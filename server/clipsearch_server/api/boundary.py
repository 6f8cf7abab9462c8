"""The API boundary shared by the search server's and the router's servicers: exceptions to gRPC statuses.

`boundary(translate)` wraps a handler so that a known domain error (errors.status_for) aborts the call
with its status and message (a ResourceExhausted with retry_after_s also sets the "retry-after-ms"
trailing metadata), `translate` maps errors particular to one front (the router's upstream errors),
and anything else becomes INTERNAL with a request id that is logged with the traceback and shown to the
caller instead of internals. Every call is counted and timed by method and status (metrics.py).

`MalformedRequests` is the interceptor that comes before any handler: grpc parses a request with the
method's request_deserializer before application code runs, and a parse error (invalid UTF-8 in a
string field, corrupt or truncated bytes, messages nested past the parser's depth limit) would reach the
caller as UNKNOWN with a Python repr. The interceptor wraps every method of the given services once,
generically: its deserializer turns a parse error into a `Malformed` marker, and its behavior answers
the marker with INVALID_ARGUMENT "malformed request: could not parse <type> (<reason>)", counted and
timed like any other call.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Collection, TypeVar

import grpc

from .errors import ResourceExhausted, status_for
from .metrics import RPC_LATENCY, RPCS

__all__ = ["Malformed", "MalformedRequests", "Translate", "boundary", "guarded"]

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
            code: grpc.StatusCode | None = grpc.StatusCode.OK
            try:
                return await method(self, request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the caller cancelled or its deadline passed
                raise
            except grpc.aio.AbortError:
                code = None  # ended with context.abort inside (a malformed message of a request stream): counted there
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
                if code is not None:
                    RPCS.labels(name, code.name).inc()
                    RPC_LATENCY.labels(name, code.name).observe(time.perf_counter() - started)
            raise AssertionError("unreachable")

        return wrapper

    return decorate


# --- requests that cannot be parsed ---------------------------------------------------------------


class Malformed:
    """What the guarded deserializer returns for request bytes that do not parse: the message to send."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _parse_problem(exc: Exception) -> str:
    """The reason of a parse error in words (protobuf's DecodeError text names the case, not the field)."""
    text = str(exc)
    if "UTF-8" in text:
        return "invalid UTF-8 in a string field"
    if "Depth" in text or "depth" in text or isinstance(exc, RecursionError):
        return "messages nested deeper than the protobuf parser allows"
    return "corrupt or truncated protobuf bytes"


def _type_name(parse: Callable[[bytes], Any], method: str) -> str:
    """The request message's full name (the deserializer is its FromString), else the method's."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or f"the request of {method}"


def _guarded_parse(parse: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    type_name = _type_name(parse, method)

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the request's
            return Malformed(f"malformed request: could not parse {type_name} ({_parse_problem(exc)})")

    return deserialize


async def _refuse(name: str, malformed: Malformed, context: grpc.aio.ServicerContext) -> None:
    RPCS.labels(name, grpc.StatusCode.INVALID_ARGUMENT.name).inc()
    RPC_LATENCY.labels(name, grpc.StatusCode.INVALID_ARGUMENT.name).observe(0.0)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed.message)


async def _checked_stream(requests: AsyncIterator[Any], name: str,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    """A request stream whose first malformed message ends the call with INVALID_ARGUMENT."""
    async for request in requests:
        if isinstance(request, Malformed):
            await _refuse(name, request, context)
        yield request


def _guarded_behavior(behavior: Callable[..., Any], name: str, streaming_requests: bool) -> Callable[..., Any] | None:
    """`behavior` refusing Malformed requests; None for a synchronous behavior (left as it is)."""
    if streaming_requests:
        if inspect.isasyncgenfunction(behavior):
            async def stream_gen(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async for reply in behavior(_checked_stream(requests, name, context), context):
                    yield reply
            return stream_gen
        if inspect.iscoroutinefunction(behavior):
            async def stream_call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await behavior(_checked_stream(requests, name, context), context)
            return stream_call
        return None
    if inspect.isasyncgenfunction(behavior):
        async def unary_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await _refuse(name, request, context)
            async for reply in behavior(request, context):
                yield reply
        return unary_gen
    if inspect.iscoroutinefunction(behavior):
        async def unary_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await _refuse(name, request, context)
            return await behavior(request, context)
        return unary_call
    return None


_KINDS = {  # handler attribute -> (its constructor, whether requests stream)
    "unary_unary": (grpc.unary_unary_rpc_method_handler, False),
    "unary_stream": (grpc.unary_stream_rpc_method_handler, False),
    "stream_unary": (grpc.stream_unary_rpc_method_handler, True),
    "stream_stream": (grpc.stream_stream_rpc_method_handler, True),
}


def guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` (of the full method path `method`) answering unparseable requests with INVALID_ARGUMENT.
    A handler that takes raw bytes (no deserializer) or whose behavior is synchronous is returned as it is."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    for attribute, (make, streaming_requests) in _KINDS.items():
        behavior = getattr(handler, attribute)
        if behavior is None:
            continue
        wrapped = _guarded_behavior(behavior, method.rsplit("/", 1)[-1], streaming_requests)
        if wrapped is None:
            return handler
        return make(wrapped, request_deserializer=_guarded_parse(parse, method),
                    response_serializer=handler.response_serializer)
    return handler


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Guards every method of `services` (full service names, e.g. "clipsearch.v1.SearchService"): a
    request whose bytes cannot be parsed ends with INVALID_ARGUMENT and a message about the request, not
    UNKNOWN. Put it first among a server's interceptors: it guards whatever handler the others chose."""

    def __init__(self, services: Collection[str]) -> None:
        self._prefixes = tuple(f"/{service}/" for service in services)
        # method -> (the handler the continuation gave, its guarded copy): built once per method, not per call
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        known = self._guarded.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = guarded(handler, details.method)
        if handler.request_deserializer is not None:  # a per-call rejection (no parsing) is not kept
            self._guarded[details.method] = (handler, wrapped)
        return wrapped
