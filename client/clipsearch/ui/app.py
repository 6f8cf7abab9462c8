"""The search page of `clipsearch ui`: an aiohttp web app in front of one clipsearch server.

Routes (all read-only; the page holds the server's token, so it listens on 127.0.0.1 by default):
  GET  /               the page (Jinja2, autoescaped); ?q=TEXT runs that search on load, ?id=ID "more like this"
  GET  /api/search     ?q=TEXT or ?id=ID, &k=N, &where=EXPR[;EXPR...], &page_token=T -> JSON results and
                       next_page_token (the "More" button passes it back for the next page)
  POST /api/search     multipart form: image (file), k, where, page_token -> the same, for an image search
  GET  /thumb          ?id=ID -> the image's thumbnail (GetThumbnails), 404 when it has none
Errors of the service come back as JSON {"error": message, "code": gRPC status name} with an HTTP
status (400 invalid query, 404 unknown id, 503 unavailable, 502 otherwise), and the page shows them.
The page builds result cards with DOM textContent only (static/app.js): no user data becomes HTML.

One middleware guards every route (page, API, thumbnails, static files, unknown paths):
- the Host header must name an address the page serves (`allowed_hosts`: the address it listens on, plus
  localhost, 127.0.0.1 and [::1] on a loopback address or all interfaces, plus --allowed-host names),
  compared without case, port or IPv6 brackets; anything else, a missing Host included, gets 421
  Misdirected Request and no results. A web site whose DNS name is rebound to 127.0.0.1 (DNS rebinding)
  therefore cannot read results or thumbnails through the page's token. `*` turns the check off;
- every response, errors included, carries SECURITY_HEADERS: a Content-Security-Policy that allows only
  the page's own script, style, images and API (nothing inline, no framing), nosniff, no referrer.

aiohttp serves it: one maintained asyncio library that brings the HTTP server, multipart uploads and
static files, and runs on the same event loop as the gRPC asyncio client (no second server framework).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import jinja2
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from ..client import AsyncClient
from ..connection import Connection
from ..errors import ClipsearchError
from ..types import SearchResult
from ..where import fields_to_json, where_filter

__all__ = ["ANY_HOST", "LOOPBACK_NAMES", "MAX_UPLOAD_BYTES", "PAGE", "SECURITY_HEADERS", "allowed_hosts", "host_name",
           "make_app", "serve"]

HERE = Path(__file__).resolve().parent
PAGE = 20  # results per page: the "more" button follows the page token for PAGE more
MAX_K = 1000  # the service's limit on k
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # the server's default upload limit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})  # as host_name() writes them
ANY_HOST = "*"  # an --allowed-host value that turns the Host check off (only behind a proxy that checks it)
CSP = (
    "default-src 'self'; "
    "script-src 'self'; "  # static/app.js only: no inline script, no eval
    "style-src 'self'; "  # static/style.css only: no inline style
    "img-src 'self'; "  # thumbnails come from /thumb
    "object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"  # no page may frame this one (clickjacking)
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 502,
    grpc.StatusCode.PERMISSION_DENIED: 502,
}

_LOG = logging.getLogger(__name__)
_CLIENT = web.AppKey("client", AsyncClient)
_TEMPLATES = web.AppKey("templates", jinja2.Environment)


def _error(message: str, code: str, status: int) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _service_error(exc: ClipsearchError) -> web.Response:
    return _error(exc.details, exc.code.name, _HTTP_STATUS.get(exc.code, 502))


_NAME = re.compile(r"[a-z0-9_.-]+", re.ASCII)  # a DNS name or an IPv4 address, lower case
_PORT = re.compile(r"(:[0-9]*)?", re.ASCII)


def host_name(value: str, *, bare_ipv6: bool = False) -> str | None:
    """The host of a Host header value (or of an --allowed-host value): lower case, without the port, the
    brackets of an IPv6 address or a trailing dot, IPv6 in its short form ("[::1]:8080" -> "::1").
    None when it is none: empty, a bad port or character, or an IPv6 address without brackets (allowed in
    option values with `bare_ipv6`, never in a Host header, where it is ambiguous with a port)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        name, rest = (value[1:end], value[end + 1:]) if end > 0 and ":" in value[1:end] else ("", "")  # IPv6 only
    elif value.count(":") > 1:
        name, rest = (value, "") if bare_ipv6 else ("", "")
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if not name or not _PORT.fullmatch(rest):
        return None
    if ":" in name:
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    name = name.removesuffix(".")
    return name if _NAME.fullmatch(name) else None


def _is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_hosts(listen: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The host names whose Host header the page answers when it listens on `listen`, as host_name()
    writes them; None when any is accepted (ANY_HOST among `extra`).

    `extra`: the --allowed-host values (each may hold several, comma-separated), e.g. a reverse proxy's
    name. Listening on a loopback address, the page also answers to that address, localhost, 127.0.0.1
    and ::1; on all interfaces (0.0.0.0, ::) only to the loopback names and `extra`, as the names that
    reach the machine cannot be guessed; on another address or name, to that one. ValueError names a
    value that is not a host."""
    names: set[str] = set()
    for item in extra:
        for part in (p.strip() for p in item.split(",")):
            if part == ANY_HOST:
                return None
            if part:
                name = host_name(part, bare_ipv6=True)
                if name is None:
                    raise ValueError(f"--allowed-host {part!r} is not a host name (give NAME, NAME:PORT, an IP "
                                     f"address, [IPv6]:PORT or {ANY_HOST})")
                names.add(name)
    listening = host_name(listen, bare_ipv6=True) or ""
    if listening in ("", "0.0.0.0", "::"):
        return frozenset(names | LOOPBACK_NAMES)
    if _is_loopback(listening):
        names |= LOOPBACK_NAMES
    return frozenset(names | {listening})


def _host_refusal(request: web.Request, allowed: frozenset[str]) -> web.Response | None:
    """None when the request's one Host header names an allowed host, else the 421 answer."""
    values = request.headers.getall(hdrs.HOST, [])
    if len(values) == 1 and host_name(values[0]) in allowed:
        return None
    if len(values) == 1:
        what = f"the Host header {values[0][:100]!r} names no address this page serves"
    else:
        what = f"the request has {len(values) or 'no'} Host header{'s' if values else ''}"
    return _error(f"{what} (a reverse proxy's name is allowed with --allowed-host NAME)", "PERMISSION_DENIED", 421)


def _guard(allowed: frozenset[str] | None) -> Middleware:
    """The middleware that refuses other Host headers (None: any) and adds SECURITY_HEADERS to every answer."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        response: web.StreamResponse | None = _host_refusal(request, allowed) if allowed is not None else None
        if response is None:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # 404, 405, 413...: aiohttp answers with the exception's headers
                exc.headers.update(SECURITY_HEADERS)
                raise
            except Exception:  # noqa: BLE001 - logged, and answered with the headers too
                _LOG.exception("%s %s failed", request.method, request.path)
                response = _error("internal error of the page (see its log)", "INTERNAL", 500)
        response.headers.update(SECURITY_HEADERS)
        return response

    return guard


def _k(raw: str | None) -> int:
    """k from the query string (default PAGE); ValueError for anything but an integer in [1, MAX_K]."""
    if raw in (None, ""):
        return PAGE
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"k must be a whole number between 1 and {MAX_K}, got {raw!r}") from None
    if not 1 <= value <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {value}")
    return value


def _where(raw: str | None) -> Any:
    """The filter box: --where expressions separated by ';' (all must hold)."""
    return where_filter([part for part in (raw or "").split(";") if part.strip()])


def _result(r: SearchResult) -> dict[str, Any]:
    score = r.score if math.isfinite(r.score) else 0.0
    return {"id": r.id, "score": score, "uri": r.uri, "metadata": r.metadata, "fields": fields_to_json(r.fields)}


async def index(request: web.Request) -> web.Response:
    template = request.app[_TEMPLATES].get_template("index.html")
    html = template.render(q=request.query.get("q", ""), id=request.query.get("id", ""),
                           where=request.query.get("where", ""), page=PAGE)
    return web.Response(text=html, content_type="text/html")


async def search(request: web.Request) -> web.Response:
    client = request.app[_CLIENT]
    try:
        if request.method == "POST":
            form = await request.post()
            upload = form.get("image")
            if not isinstance(upload, web.FileField):
                return _error("choose an image file to search with", "INVALID_ARGUMENT", 400)
            data = upload.file.read()
            k, where = _k(str(form.get("k", "")) or None), _where(str(form.get("where", "")))
            token = str(form.get("page_token", ""))
            results = await client.image_search(data, k=k, where=where, page_token=token)
            query = {"image": upload.filename or "uploaded image"}
        else:
            k, where = _k(request.query.get("k")), _where(request.query.get("where"))
            token = request.query.get("page_token", "")
            if request.query.get("id"):
                results = await client.image_search(id=request.query["id"], k=k, where=where, page_token=token)
                query = {"id": request.query["id"]}
            elif request.query.get("q", "").strip():
                results = await client.text_search(request.query["q"], k=k, where=where, page_token=token)
                query = {"q": request.query["q"]}
            else:
                return _error("type what to look for, or choose an image", "INVALID_ARGUMENT", 400)
    except ValueError as exc:  # k or the filter box
        return _error(str(exc), "INVALID_ARGUMENT", 400)
    except ClipsearchError as exc:
        return _service_error(exc)
    return web.json_response({"query": query, "k": k, "results": [_result(r) for r in results],
                              "next_page_token": results.next_page_token})


async def thumb(request: web.Request) -> web.Response:
    image_id = request.query.get("id", "")
    if not image_id:
        return _error("give the image id as ?id=", "INVALID_ARGUMENT", 400)
    try:
        found = await request.app[_CLIENT].thumbnails([image_id], allow_missing=True)
    except ClipsearchError as exc:
        return _service_error(exc)
    if image_id not in found:
        return _error(f"image {image_id!r} has no thumbnail", "NOT_FOUND", 404)
    # Thumbnails change when their image is replaced: browsers may keep one for a minute at most.
    return web.Response(body=found[image_id].data, content_type=found[image_id].mime_type,
                        headers={"Cache-Control": "private, max-age=60"})


def make_app(connection: Connection, timeout: float = 30.0,
             hosts: frozenset[str] | None = LOOPBACK_NAMES) -> web.Application:
    """The web app; its gRPC client is made on start-up (inside the event loop) and closed on clean-up.
    `hosts`: the Host names it answers (see allowed_hosts), None for any."""
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 64 * 1024, middlewares=[_guard(hosts)])
    app[_TEMPLATES] = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                         autoescape=jinja2.select_autoescape(default=True, default_for_string=True))
    app[_TEMPLATES].policies["json.dumps_function"] = json.dumps

    async def client_context(app: web.Application):  # type: ignore[no-untyped-def]
        app[_CLIENT] = AsyncClient(timeout=timeout, connection=connection)
        yield
        await app[_CLIENT].close()

    app.cleanup_ctx.append(client_context)
    app.router.add_get("/", index)
    app.router.add_get("/api/search", search)
    app.router.add_post("/api/search", search)
    app.router.add_get("/thumb", thumb)
    app.router.add_static("/static/", HERE / "static")
    return app


def serve(connection: Connection, host: str, port: int, timeout: float = 30.0, *,
          hosts: frozenset[str] | None) -> int:
    """Runs the page until interrupted; prints its address and the Host names it answers first.
    `hosts`: as allowed_hosts(host, the --allowed-host values) gives them."""
    app = make_app(connection, timeout, hosts)
    shown = f"[{host}]" if ":" in host else host
    names = "any Host header (unsafe unless a proxy checks it)" if hosts is None else \
        "Host " + ", ".join(sorted(f"[{h}]" if ":" in h else h for h in hosts))
    message = f"clipsearch ui for {connection.server} at http://{shown}:{port}/ (answers to {names})"
    web.run_app(app, host=host, port=port, print=lambda _: print(message, flush=True), handle_signals=True)
    return 0
