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

aiohttp serves it: one maintained asyncio library that brings the HTTP server, multipart uploads and
static files, and runs on the same event loop as the gRPC asyncio client (no second server framework).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import grpc
import jinja2
from aiohttp import web

from ..client import AsyncClient
from ..connection import Connection
from ..errors import ClipsearchError
from ..types import SearchResult
from ..where import fields_to_json, where_filter

__all__ = ["MAX_UPLOAD_BYTES", "PAGE", "make_app", "serve"]

HERE = Path(__file__).resolve().parent
PAGE = 20  # results per page: the "more" button follows the page token for PAGE more
MAX_K = 1000  # the service's limit on k
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # the server's default upload limit

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 502,
    grpc.StatusCode.PERMISSION_DENIED: 502,
}

_CLIENT = web.AppKey("client", AsyncClient)
_TEMPLATES = web.AppKey("templates", jinja2.Environment)


def _error(message: str, code: str, status: int) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _service_error(exc: ClipsearchError) -> web.Response:
    return _error(exc.details, exc.code.name, _HTTP_STATUS.get(exc.code, 502))


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


def make_app(connection: Connection, timeout: float = 30.0) -> web.Application:
    """The web app; its gRPC client is made on start-up (inside the event loop) and closed on clean-up."""
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 64 * 1024)
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


def serve(connection: Connection, host: str, port: int, timeout: float = 30.0) -> int:
    """Runs the page until interrupted; prints its address first."""
    app = make_app(connection, timeout)
    shown = f"[{host}]" if ":" in host else host
    message = f"clipsearch ui for {connection.server} at http://{shown}:{port}/"
    web.run_app(app, host=host, port=port, print=lambda _: print(message, flush=True), handle_signals=True)
    return 0
