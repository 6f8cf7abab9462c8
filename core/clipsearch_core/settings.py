"""Every option of the server, the worker, the router and `clipsearch up`, each declared once.

One `Option` gives its flag (`--batch-size`), its environment variable (`CLIPSEARCH_BATCH_SIZE`),
its default, its type and its help. `parser(role)` builds a program's command line from the
declarations of its role; `child_args()` rebuilds a child's command line from parsed values, which is
how `clipsearch up` passes its options to the server and worker it starts. Precedence: flag, then
environment variable, then default. Secrets (tokens) never go on a child's command line: they
travel in its environment.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["OPTIONS", "Option", "child_args", "default", "parse", "parser"]

SERVER, WORKER, ROUTER = "server", "worker", "router"
BOTH = (SERVER, WORKER)


@dataclass(frozen=True)
class Option:
    """One option. roles: the programs that take it; up: whether `clipsearch up` offers it (it fills
    in the ones it does not offer itself, e.g. the worker's --server)."""

    flag: str
    default: Any
    help: str
    roles: tuple[str, ...]
    type: type = str
    choices: tuple[str, ...] = ()
    up: bool = True
    secret: bool = False
    separator: str = os.pathsep  # between the items of a list option in its environment variable

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return "CLIPSEARCH_" + self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    # The model and the queue: server and workers must agree on both.
    Option("--model", "ViT-B-32", "OpenCLIP model: built-in name, hf-hub:org/repo or local-dir:/path", BOTH),
    Option("--pretrained", "laion2b_s34b_b79k", "weights tag for built-in names; 'none' for random weights", BOTH),
    Option("--device", "auto", "auto (cuda when available), cpu, cuda, cuda:N", BOTH),
    Option("--redis-url", "redis://127.0.0.1:6379/0", "Redis URL of the job queue (`up` starts its own unless given)",
           BOTH),
    Option("--redis-prefix", "clipsearch", "prefix of every Redis key", BOTH),
    # Images, wherever they come from.
    Option("--allowed-root", [], "folder the worker/server may read image paths from (repeatable)", BOTH, type=list),
    Option("--allow-hard-links", False, "read image files that have more than one hard link (one of them may lie "
           "outside the allowed roots)", BOTH, type=bool),
    Option("--allow-network", [], "network (CIDR) or host name that image URLs may reach although it is loopback, "
           "link-local or private (repeatable; comma-separated in the variable)", BOTH, type=list, separator=","),
    Option("--max-image-bytes", 32 * 1024 * 1024, "largest encoded image accepted, bytes", BOTH, type=int),
    Option("--max-pixels", 64_000_000, "largest decoded image accepted, width x height (decompression bombs)", BOTH,
           type=int),
    Option("--max-aspect-ratio", 20.0, "longest side / shortest side accepted: a thinner image would be enlarged to "
           "the model's input at a cost its pixel count does not bound", BOTH, type=float),
    Option("--http-timeout", 10.0, "seconds an image URL may take in all (connect, redirects, headers, body)", BOTH,
           type=float),
    # Process.
    Option("--threads", 0, "CPU threads for torch/FAISS (0: library default)", BOTH, type=int),
    Option("--log-level", "INFO", "DEBUG, INFO, WARNING, ERROR", (*BOTH, ROUTER)),
    Option("--log-format", "text", "json: one JSON object per line", (*BOTH, ROUTER), choices=("text", "json")),
    Option("--auth-token", "", "bearer token with write scope (prefer the CLIPSEARCH_AUTH_TOKEN variable)", BOTH,
           secret=True),
    Option("--metrics-port", 0, "Prometheus /metrics port (0: off; `up` gives it to the server)", (*BOTH, ROUTER),
           type=int),
    # The search server.
    Option("--host", "[::]", "address to listen on", (SERVER, ROUTER)),
    Option("--port", 50051, "gRPC port (0: any free port)", (SERVER, ROUTER), type=int),
    Option("--data-dir", "clipsearch-data", "where the image store and index snapshots live", (SERVER,)),
    Option("--store", "", "source of truth: empty = SQLite in --data-dir; postgresql://... = a PostgreSQL database "
           "shared by every server of the collection", (SERVER,)),
    Option("--shard", [], "server: I/N, this server holds shard I (0-based) of N, fixed when the collection is "
           "created (unset: the whole collection); router: the servers of one shard, host:port with replicas "
           "comma-separated, one --shard per shard in shard order (space-separated in the variable)",
           (SERVER, ROUTER), type=list, separator=" "),
    Option("--hnsw-m", 32, "HNSW graph degree", (SERVER,), type=int),
    Option("--ef-construction", 100, "HNSW build beam width", (SERVER,), type=int),
    Option("--ef-search", 64, "HNSW query beam width (raised to k for larger k)", (SERVER,), type=int),
    Option("--snapshot-interval", 60.0, "seconds between index snapshots (when it changed)", (SERVER,), type=float),
    Option("--compact-ratio", 0.2, "rebuild the graph when this share of it is tombstones", (SERVER,), type=float),
    Option("--compact-min", 1000, "... and at least this many entries are tombstones", (SERVER,), type=int),
    Option("--filter-exact-max", 10_000, "a filtered search matching at most this many images scans them exactly "
           "instead of searching the HNSW graph", (SERVER,), type=int),
    Option("--seal-at", 20_000, "new vectors wait in an exact growing part (searched with the graph) and are "
           "moved into the HNSW graph in the background once this many have come (and at each snapshot)",
           (SERVER,), type=int),
    Option("--index", "hnsw", "index kind, fixed when the collection is created: hnsw (HNSW32,Flat), hnsw-sq8, "
           "ivf-pq (IVF + HNSW coarse quantizer + 4-bit fast-scan PQ, re-ranked with exact vectors read through mmap), "
           "auto (picked from --memory-budget and the collection's size), or a faiss index_factory string",
           (SERVER,)),
    Option("--memory-budget", "8GiB", "RAM the index may use, for --index auto (e.g. 512MiB, 8GiB, 1.5TB)", (SERVER,)),
    Option("--train-min", 20_000, "vectors a collection needs before a kind that must be trained (SQ8, IVF, PQ) is "
           "trained; below, it is served exactly", (SERVER,), type=int),
    Option("--nprobe", 16, "IVF lists scanned per query (IVF kinds)", (SERVER,), type=int),
    Option("--rerank", 20, "compressed kinds fetch this many candidates per result and re-score them with the exact "
           "vectors (0: no re-ranking)", (SERVER,), type=int),
    Option("--max-queue-jobs", 1_000_000, "SubmitImages fails with RESOURCE_EXHAUSTED beyond this many queued jobs",
           (SERVER,), type=int),
    Option("--max-queue-bytes", 2 * 1024**3, "same, for inline image bytes waiting in Redis", (SERVER,), type=int),
    Option("--text-batch", 32, "most TextSearch queries encoded in one forward pass", (SERVER,), type=int),
    Option("--image-batch", 16, "most ImageSearch queries encoded in one forward pass (1: no batching)", (SERVER,),
           type=int),
    Option("--max-message-bytes", 64 * 1024 * 1024, "largest gRPC message received or sent, bytes", (SERVER, ROUTER),
           type=int),
    Option("--grace", 10.0, "seconds running calls may take to finish on shutdown", (SERVER, ROUTER), type=float),
    Option("--tokens-file", "", "file of scoped tokens, one 'TOKEN read|write [name]' per line; reloaded on change "
           "and on SIGHUP", (SERVER,)),
    # Replicas on a shared PostgreSQL store (--store postgresql://...).
    Option("--max-lag", 5.0, "with a PostgreSQL store: health reports NOT_SERVING while this server has been behind "
           "the store's latest change for longer than this, seconds", (SERVER,), type=float),
    Option("--read-wait", 5.0, "a search given a min_position waits at most this long, seconds, for this server to "
           "apply the store up to it, then fails with UNAVAILABLE", (SERVER,), type=float),
    Option("--shared-snapshots", "", "with a PostgreSQL store: where the replicas publish index snapshots, a "
           "shared directory (e.g. a network volume) or s3://bucket/prefix (S3-compatible, boto3's AWS_* settings); "
           "a replica on an empty disk starts from the latest one", (SERVER,)),
    Option("--tls-cert", "", "serve TLS with this certificate (PEM)", (SERVER, ROUTER)),
    Option("--tls-key", "", "private key of --tls-cert (PEM)", (SERVER, ROUTER)),
    Option("--tls-client-ca", "", "require client certificates signed by this CA (mutual TLS)", (SERVER, ROUTER)),
    # The encoder worker.
    Option("--server", "localhost:50051", "search server host:port to push vectors to", (WORKER,), up=False),
    Option("--tls-ca", "", "CA certificate (PEM) of the server(s); enables TLS", (WORKER, ROUTER), up=False),
    Option("--tls-client-cert", "", "client certificate (PEM), for mutual TLS", (WORKER, ROUTER), up=False),
    Option("--tls-client-key", "", "client key (PEM), for mutual TLS", (WORKER, ROUTER), up=False),
    Option("--batch-size", 32, "images per forward pass", (WORKER,), type=int),
    Option("--decode-threads", 4, "threads decoding images beside the model (with --decode-processes 0)", (WORKER,),
           type=int),
    Option("--decode-processes", 0, "processes reading, decoding and preprocessing images, so that decoding uses "
           "more cores (0: the decode threads, in the worker process)", (WORKER,), type=int),
    Option("--visibility-timeout", 300.0, "seconds a job of a worker that stopped heartbeating waits before another "
           "worker takes it; a live worker's jobs are never taken", (WORKER,), type=float),
    Option("--worker-ttl", 15.0, "seconds without a heartbeat after which a worker counts as dead and its jobs are "
           "reclaimed at once", (WORKER,), type=float),
    Option("--consumer", "", "consumer name in the Redis group (default host-pid-random)", (WORKER,), up=False),
    Option("--heartbeat-file", "", "file touched on every loop turn (for container health checks)", (WORKER,),
           up=False),
    Option("--max-deliveries", 5, "deliveries of a job before it is dead-lettered as failed", (WORKER,), type=int),
    Option("--device-decode", False, "decode JPEGs on the model's device (nvJPEG on CUDA) instead of PIL", (WORKER,),
           type=bool),
    Option("--decode-stream", "on", "with --device-decode on a GPU: decode on a CUDA stream of the decoding "
           "thread's own, so that waiting for the decoder does not wait for the model's queued work too (off: on "
           "the model's stream, as before; with torchvision's decoder, used when TorchCodec is missing, its writes "
           "are then not ordered after the model's work)", (WORKER,), choices=("on", "off")),
    # The router (`clipsearch router`): one address in front of several search servers.
    Option("--shard-timeout", 2.0, "seconds each shard has to answer a search or a stats call (capped by the "
           "caller's deadline); a shard still silent then is left out (partial) or fails the call. Writes take the "
           "caller's deadline", (ROUTER,), type=float, up=False),
    Option("--health-interval", 1.0, "seconds between health checks of each replica; an unhealthy replica gets no "
           "calls until it answers SERVING again", (ROUTER,), type=float, up=False),
    Option("--replica-writes", "auto", "all: writes go to every replica of the owning shard (each has its own "
           "SQLite store); one: to one replica (they share a PostgreSQL --store); auto: asks each shard's store "
           "kind at its first write and picks one for postgresql, else all", (ROUTER,),
           choices=("auto", "all", "one"), up=False),
    Option("--thumbnail-size", 256, "longest side, in pixels, of the thumbnail stored with each image (never "
           "enlarged); 0 turns thumbnails off", (WORKER,), type=int),
    Option("--thumbnail-format", "webp", "encoding of the thumbnails", (WORKER,), choices=("webp", "jpeg")),
    Option("--thumbnail-quality", 75, "encoder quality of the thumbnails, 1-100", (WORKER,), type=int),
    Option("--decode-overlap", "auto", "decode the next batch and push the last one while the model encodes this "
           "one: on, off, or auto (on, unless the model runs on the CPU with a thread per core: work beside it would "
           "only slow it down)",
           (WORKER,), choices=("auto", "on", "off")),
)

_BY_FLAG = {o.flag: o for o in OPTIONS}


def default(flag: str) -> Any:
    """The declared default of an option (for code that needs it outside a command line)."""
    value = _BY_FLAG[flag].default
    return list(value) if isinstance(value, list) else value


def _from_env(option: Option) -> Any:
    raw = os.environ.get(option.env)
    if raw is None:
        return default(option.flag)
    if option.type is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if option.type is list:
        return [part.strip() for part in raw.split(option.separator) if part.strip()]
    return option.type(raw)


def options_for(role: str) -> list[Option]:
    """The options of "server", "worker", "router", or "up" (the union of server and worker that `up` offers)."""
    if role == "up":
        return [o for o in OPTIONS if o.up]
    return [o for o in OPTIONS if role in o.roles]


def parser(role: str, prog: str, description: str) -> argparse.ArgumentParser:
    """A command line for `role` with every option it takes."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog="Every option can also be set as CLIPSEARCH_<OPTION>, "
                                       "e.g. CLIPSEARCH_REDIS_URL.")
    for o in options_for(role):
        help_text = f"{o.help} [{o.env}]"
        if o.type is bool:
            p.add_argument(o.flag, action="store_true", default=_from_env(o), help=help_text)
        elif o.type is list:
            p.add_argument(o.flag, action="append", default=None, help=help_text)
        else:
            p.add_argument(o.flag, type=o.type, default=_from_env(o), choices=o.choices or None,
                           help=f"{help_text} (default: {o.default})")
    return p


def parse(role: str, argv: Sequence[str] | None, prog: str, description: str) -> argparse.Namespace:
    """Parses a command line; list options given on it replace (not extend) their environment value."""
    args = parser(role, prog, description).parse_args(argv)
    for o in options_for(role):
        if o.type is list and getattr(args, o.dest) is None:
            setattr(args, o.dest, _from_env(o))
    return args


def child_args(values: argparse.Namespace, role: str, skip: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that give a `role` child the same option values.

    Options `values` does not hold, or named in `skip`, are left to the child's own defaults.
    """
    argv: list[str] = []
    env: dict[str, str] = {}
    for o in options_for(role):
        if o.flag in skip or not hasattr(values, o.dest):
            continue
        value = getattr(values, o.dest)
        if o.secret:
            if value:
                env[o.env] = str(value)
        elif o.type is bool:
            argv += [o.flag] if value else []
        elif o.type is list:
            for item in value or []:
                argv += [o.flag, str(item)]
        else:
            argv += [o.flag, str(value)]
    return argv, env
