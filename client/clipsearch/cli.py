"""The `clipsearch` command: run the stack (`up`, `server`, `worker`, `router`) and use it (`index`, `search`,
`get`, `count`, `embed`, `export`, `import`, `update`, `delete`, `stats`, `failures`, `ui`: a search page in the
browser).

Every option can also be set as an environment variable CLIPSEARCH_<OPTION> (e.g. CLIPSEARCH_SERVER).
Client commands need only this package. `server`, `worker` and `up` run the programs
`python -m clipsearch_server`, `python -m clipsearch_worker` and `python -m clipsearch_core.up` in
this process (exec), whose options are declared in `clipsearch_core.settings`; this package imports
none of them (install clipsearch[all] to have them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from .client import DEFAULT_SERVER, Client
from .connection import Connection
from .errors import ClipsearchError
from .types import EmbedInput, ImageInput, Progress, Query, Record, SearchPage, Term
from .where import fields_from_json, fields_to_json, where_filter

__all__ = ["main"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CLIPSEARCH_{name.upper().replace('-', '_')}", default)


def _add(p: argparse.ArgumentParser, flag: str, default: object = None, separator: str = os.pathsep,
         **kw: object) -> None:
    """Adds --flag whose default comes from CLIPSEARCH_FLAG, then `default` (an "append" option's variable
    holds its values separated by `separator`)."""
    name = flag.lstrip("-")
    env = _env(name)
    value = default if env is None else (env.split(separator) if kw.get("action") == "append" else env)
    p.add_argument(flag, default=value, **kw)  # type: ignore[arg-type]


def _tls_client_options(p: argparse.ArgumentParser) -> None:
    _add(p, "--tls-ca", "", help="CA certificate (PEM) of the server; enables TLS")
    _add(p, "--tls-client-cert", "", help="client certificate (PEM), for mutual TLS")
    _add(p, "--tls-client-key", "", help="client key (PEM), for mutual TLS")


def _connection(args: argparse.Namespace) -> Connection:
    return Connection.from_env(
        args.server, token=args.auth_token or None, tls_ca=args.tls_ca or None,
        tls_cert=args.tls_client_cert or None, tls_key=args.tls_client_key or None,
    )


def _client_options(p: argparse.ArgumentParser) -> None:
    _add(p, "--server", DEFAULT_SERVER, help="search server host:port")
    _add(p, "--timeout", "30", type=float, help="deadline of each call, seconds")
    _add(p, "--auth-token", "", help="bearer token (prefer the CLIPSEARCH_AUTH_TOKEN variable)")
    _tls_client_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipsearch", description="Text-to-image search with OpenCLIP and FAISS.")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, (_, text) in PROGRAMS.items():
        sub.add_parser(name, help=f"{text} (`clipsearch {name} --help` for its options)", add_help=False)

    index = sub.add_parser("index", help="submit image files and folders for indexing")
    _client_options(index)
    index.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    index.add_argument("--no-wait", action="store_true", help="return once submitted")
    index.add_argument("--by-path", action="store_true",
                       help="send paths (workers read them) instead of uploading bytes")
    index.add_argument("--chunk", type=int, default=64, help="images per SubmitImages call")
    index.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata for every image")
    index.add_argument("--metadata", metavar="FILE",
                       help='JSON object mapping each file\'s path (relative to the folder given, or its name when '
                            'a file is given) to its fields: strings, numbers, booleans, arrays of strings, '
                            '{"$time": "2024-01-01T00:00:00Z"} for a timestamp')

    search = sub.add_parser("search", help="search by text, by image file, or by indexed image id")
    _client_options(search)
    search.add_argument("text", nargs="?", help="query text")
    search.add_argument("--image", help="query image file")
    search.add_argument("--id", help="id of an indexed image (more like this)")
    search.add_argument("-k", type=int, default=10, help="number of results")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.add_argument("--min-score", type=float, default=None, help="leave out results scoring below this")
    search.add_argument("--where", action="append", default=[], metavar="EXPR",
                        help="only images whose fields match, e.g. shape=circle, 'shape in circle,square', "
                             "'n>=100' (also >, <, <=, !=), 'taken>=2024-01-01'; repeatable, all must hold")
    search.add_argument("--page-token", default="", metavar="TOKEN",
                        help="the next_page_token of the previous page (same query and options): the next page")
    search.add_argument("--collapse", type=float, default=None, metavar="COSINE",
                        help="fold near duplicates (cosine >= COSINE, e.g. 0.95) into the best of each group")
    for sign, what in (("plus", "towards"), ("minus", "away from")):
        search.add_argument(f"--{sign}", action="append", default=[], metavar="TEXT[:WEIGHT]",
                            help=f"a text term steering {what} it (weight default 1), e.g. --{sign} 'at night':0.3; "
                                 "give the weight when the text ends in ':<number>'")
        search.add_argument(f"--{sign}-id", action="append", default=[], metavar="ID[:WEIGHT]",
                            help=f"an indexed image's id steering {what} it (weight default 1; give the weight "
                                 "when the id ends in ':<number>')")
    search.add_argument("--sheet", metavar="FILE",
                        help="also write the results as one image (.jpg, .png or .webp): a grid of thumbnails with "
                             "rank and score under each (k at most 100; needs Pillow: pip install 'clipsearch[ui]')")

    get = sub.add_parser("get", help="the records of indexed images by id: uri, metadata, fields, model")
    _client_options(get)
    get.add_argument("ids", nargs="+", metavar="ID", help="image ids")
    get.add_argument("--vectors", action="store_true", help="also print each stored vector (unit length)")
    get.add_argument("--json", action="store_true", help="print JSON")

    count = sub.add_parser("count", help="the number of indexed images, or of those matching --where")
    _client_options(count)
    count.add_argument("--where", action="append", default=[], metavar="EXPR",
                       help="only images whose fields match (the syntax of `search --where`); repeatable, "
                            "all must hold")
    count.add_argument("--json", action="store_true", help='print JSON: {"count": N}')

    embed = sub.add_parser("embed", help="the vectors of texts and image files (the collection's model)")
    _client_options(embed)
    embed.set_defaults(inputs=[])
    embed.add_argument("--text", dest="inputs", action=_InOrder, const="text", metavar="TEXT",
                       help="a text to embed; repeatable, and mixes with --image in the order given")
    embed.add_argument("--image", dest="inputs", action=_InOrder, const="image", metavar="FILE",
                       help="an image file to embed (uploaded); repeatable")
    embed.add_argument("--json", action="store_true",
                       help='print JSON: {"model", "dim", "embeddings": [{"kind", "input", "vector"}]}')

    # records: export, import, update (and delete --where, below)
    export = sub.add_parser("export", help="write every record (or those matching --where) to a JSON-lines file "
                                           "(--vectors: a backup that `clipsearch import` restores)")
    _client_options(export)
    export.add_argument("file", metavar="FILE", help="the file to write (replaced when the export is complete); "
                                                     "- for standard output")
    export.add_argument("--where", action="append", default=[], metavar="EXPR",
                        help="only records whose fields match (the syntax of `search --where`); repeatable, "
                             "all must hold")
    export.add_argument("--vectors", action="store_true",
                        help="include the vectors, and the thumbnails unless --no-thumbnails: what an import needs")
    export.add_argument("--no-thumbnails", action="store_true", help="leave the thumbnails out")
    export.set_defaults(subparser=export)

    import_ = sub.add_parser("import", help="write the records of a file made by `clipsearch export --vectors` "
                                            "(checked first: nothing is written unless every line is valid)")
    _client_options(import_)
    import_.add_argument("file", metavar="FILE", help="the file to read; - for standard input")
    import_.add_argument("--json", action="store_true", help='print JSON: {"imported", "batches", "seconds"}')

    update = sub.add_parser("update", help="set or remove fields and metadata of indexed images, by id or by "
                                           "--where, without re-encoding them")
    _client_options(update)
    which = update.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="extend", nargs="+", metavar="ID",
                       help="the images to update (repeatable, or several after one --id)")
    which.add_argument("--where", action="append", metavar="EXPR",
                       help="or: every image whose fields match (the syntax of `search --where`); repeatable, "
                            "all must hold")
    update.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a typed field to set; VALUE is JSON when it parses as JSON (n=3, x=0.5, ok=true, "
                             'tags=\'["a","b"]\', taken=\'{"$time": "2024-01-01T00:00:00Z"}\'), else a string; '
                             "quote it as JSON to force a string (\'code=\"007\"\'); repeatable")
    update.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="a metadata entry to set (always a string, as `index --meta`); repeatable")
    update.add_argument("--unset", action="append", default=[], metavar="KEY",
                        help="a field or metadata key to remove; repeatable")
    update.add_argument("--replace", action="store_true",
                        help="remove every other field and metadata entry: the images end with exactly what is set")
    update.add_argument("--json", action="store_true", help='print JSON: {"updated", "not_found", "position"}')
    update.set_defaults(subparser=update)

    ui = sub.add_parser("ui", help="serve a search page at http://127.0.0.1:PORT/ "
                                   "(needs: pip install 'clipsearch[ui]')")
    _client_options(ui)
    ui.add_argument("--port", type=int, default=8080, help="HTTP port of the page")
    ui.add_argument("--host", default="127.0.0.1", help="address the page listens on (default: this machine only)")
    _add(ui, "--allowed-host", [], separator=",", action="append", metavar="NAME",
         help="a host name the page answers to besides the address it listens on (and localhost, 127.0.0.1, "
              "[::1] on loopback or all interfaces), e.g. a reverse proxy's; repeatable or comma-separated "
              "(CLIPSEARCH_ALLOWED_HOST); other Host headers get 421 (DNS rebinding). '*' accepts any: unsafe "
              "unless a proxy checks the Host")

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

    delete = sub.add_parser("delete", help="delete images by id, or every image matching --where")
    _client_options(delete)
    delete.add_argument("ids", nargs="*", metavar="ID", help="image ids")
    delete.add_argument("--where", action="append", default=[], metavar="EXPR",
                        help="instead of ids: every image whose fields match (the syntax of `search --where`); "
                             "repeatable, all must hold")
    delete.add_argument("--all", action="store_true",
                        help="alone: delete every image; with --where: also when it matches every image (refused "
                             "without --all)")
    delete.set_defaults(subparser=delete)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PROGRAMS:
        return _run_program(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    handler = {
        "index": cmd_index,
        "search": cmd_search,
        "get": cmd_get,
        "count": cmd_count,
        "export": cmd_export,
        "import": cmd_import,
        "update": cmd_update,
        "embed": cmd_embed,
        "stats": cmd_stats,
        "failures": cmd_failures,
        "retry": cmd_retry,
        "status": cmd_status,
        "delete": cmd_delete,
        "ui": cmd_ui,
    }[args.command]
    try:
        return handler(args)
    except ClipsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# --- running the stack ---------------------------------------------------------------------------

PROGRAMS = {
    "up": ("clipsearch_core.up", "run Redis (unless --redis-url), a server and a worker on this machine"),
    "server": ("clipsearch_server", "run the search server"),
    "router": ("clipsearch_router", "run a router in front of several search servers (shards, replicas)"),
    "worker": ("clipsearch_worker", "run an encoder worker"),
}


def _run_program(name: str, argv: list[str]) -> int:
    """Replaces this process by `python -m <module> argv...` (same pid, signals and exit status)."""
    module = PROGRAMS[name][0]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        print(f"error: `clipsearch {name}` needs the server and worker: pip install 'clipsearch[all]'", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return 0  # not reached


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

    try:
        per_file = _metadata_file(args.metadata, args.paths) if args.metadata else {}
    except (OSError, ValueError) as exc:
        print(f"error: --metadata: {exc}", file=sys.stderr)
        return 2
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
                    ImageInput(image=b"" if args.by_path else path.read_bytes(), uri=str(path), metadata=metadata,
                               fields=per_file.get(path, {}))
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


def _metadata_file(path: str, roots: Sequence[str]) -> dict[Path, dict[str, Any]]:
    """Fields per resolved image path from a JSON file keyed by paths relative to the folders given."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object mapping file paths to objects of fields")
    out: dict[Path, dict[str, Any]] = {}
    for rel, fields in data.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: {rel!r} must map to an object of fields")
        parsed = fields_from_json(fields, f"{path}: {rel!r}")
        matched = False
        for root in roots:
            base = Path(root).expanduser()
            candidate = (base / rel) if base.is_dir() else (base if base.name == rel else None)
            if candidate is not None and candidate.is_file():
                out[candidate.resolve()] = parsed
                matched = True
        if not matched:
            print(f"  warning: {path}: no image file {rel!r} under {', '.join(roots)}", file=sys.stderr)
    return out


def _wait_for_batch(client: Client, batch_id: str, total: int) -> Progress:
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="indexing", disable=None) as bar:
        while True:
            progress = client.progress(batch_id)
            bar.update(progress.indexed + progress.failed - bar.n)
            if progress.done:
                return progress
            time.sleep(0.5)


def _terms(args: argparse.Namespace) -> list[Term]:
    """The weighted terms of --plus/--minus(-id) (TEXT:WEIGHT, ID:WEIGHT); minus terms get negative weights."""
    terms = []
    for option, kind, sign in (("plus", "text", 1.0), ("minus", "text", -1.0), ("plus_id", "id", 1.0),
                               ("minus_id", "id", -1.0)):
        for raw in getattr(args, option):
            value, _, weight = raw.rpartition(":")
            try:
                magnitude = float(weight) if value else 1.0
            except ValueError:
                value, magnitude = raw, 1.0
            terms.append(Term(weight=sign * magnitude, **{kind: value or raw}))
    return terms


def cmd_search(args: argparse.Namespace) -> int:
    queries = [q for q in (args.text, args.image, args.id) if q]
    if len(queries) != 1:
        print("error: give exactly one of TEXT, --image FILE or --id ID", file=sys.stderr)
        return 2
    try:
        where = where_filter(args.where)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    terms = _terms(args)
    thumbs = bool(args.sheet)
    options = dict(k=args.k, where=where, min_score=args.min_score, page_token=args.page_token,
                   collapse_threshold=args.collapse)
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        if terms:
            main = Term(text=args.text) if args.text else (
                Term(image=Path(args.image).read_bytes()) if args.image else Term(id=args.id))
            results: SearchPage = client.batch_search([Query(terms=[main, *terms], **options)])[0]
            label = " ".join([queries[0], *(f"{'+' if t.weight > 0 else '-'}{abs(t.weight):g}x{t.text or t.id}"
                                            for t in terms)])
            if thumbs and results:  # a batch query carries no inline thumbnails: fetch them
                found = client.thumbnails([r.id for r in results], allow_missing=True)
                results = SearchPage([replace(r, thumbnail=found[r.id].data, thumbnail_mime_type=found[r.id].mime_type)
                                      if r.id in found else r for r in results], results.next_page_token)
        elif args.text:
            results = client.text_search(args.text, **options, include_thumbnails=thumbs)
            label = f'"{args.text}"'
        elif args.image:
            results = client.image_search(Path(args.image).read_bytes(), **options, include_thumbnails=thumbs)
            label = f"image {args.image}"
        else:
            results = client.image_search(id=args.id, **options, include_thumbnails=thumbs)
            label = f"id {args.id}"
    if args.sheet:
        from .sheet import save_sheet

        save_sheet(results, args.sheet, title=f"Query: {label}")
        print(f"wrote {args.sheet} ({len(results)} results)", file=sys.stderr)
    if args.json:
        data: dict[str, Any] = {"results": [{"id": r.id, "uri": r.uri, "score": r.score, "metadata": r.metadata,
                                   "fields": fields_to_json(r.fields), "collapsed_ids": r.collapsed_ids}
                                  for r in results],
                      "next_page_token": results.next_page_token}
        if results.shards_total:  # answered by a router
            data.update(shards_total=results.shards_total, shards_answered=results.shards_answered,
                        partial=results.partial)
        print(json.dumps(data))
        return 0
    print(f"\nQuery: {label}\n")
    for rank, r in enumerate(results, 1):
        folded = f", {len(r.collapsed_ids)} near duplicates folded" if r.collapsed_ids else ""
        print(f"Match {rank}: {r.uri or r.id} (id: {r.id}, score: {r.score:.4f}{folded})")
    if results.partial:
        print(f"(partial: {results.shards_answered} of {results.shards_total} shards answered)")
    if not results:
        print("no matches (is the index empty?)")
    if results.next_page_token:
        print(f"\nnext page: --page-token {results.next_page_token}")
    return 0


GET_CHUNK = 1000  # ids per GetRecords call (the API's limit)


def _record_json(r: Record, vectors: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"id": r.id, "uri": r.uri, "metadata": r.metadata, "fields": fields_to_json(r.fields),
                            "model": r.model, "dim": r.dim, "updated_at_ms": r.updated_at_ms}
    if vectors:
        data["vector"] = r.floats()
    return data


def cmd_get(args: argparse.Namespace) -> int:
    """Prints the records in the order of the ids; ids that are not indexed are listed (on stderr, or as
    "missing_ids" with --json) and make the exit status 1."""
    ids = list(dict.fromkeys(args.ids))
    records: list[Record] = []
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        for start in range(0, len(ids), GET_CHUNK):
            records += client.get_records(ids[start:start + GET_CHUNK], include_vectors=args.vectors,
                                          allow_missing=True)
    found = {r.id for r in records}
    missing = [i for i in ids if i not in found]
    if args.json:
        print(json.dumps({"records": [_record_json(r, args.vectors) for r in records], "missing_ids": missing}))
        return 1 if missing else 0
    for r in records:
        updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.updated_at_ms / 1000))
        print(f"{r.id}\n  uri: {r.uri}\n  model: {r.model} (dim {r.dim})\n  updated: {updated}")
        if r.metadata:
            print(f"  metadata: {json.dumps(r.metadata, sort_keys=True)}")
        if r.fields:
            print(f"  fields: {json.dumps(fields_to_json(r.fields), sort_keys=True)}")
        if args.vectors:
            print(f"  vector: {json.dumps(r.floats())}")
    for image_id in missing:
        print(f"  not found: {image_id}", file=sys.stderr)
    return 1 if missing else 0


def cmd_count(args: argparse.Namespace) -> int:
    try:
        where = where_filter(args.where)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        n = client.count(where)
    print(json.dumps({"count": n}) if args.json else n)
    return 0


class _InOrder(argparse.Action):
    """Appends (its const, the value) to a list shared by several options, so their order survives."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), (self.const, values)])


EMBED_CHUNK = 64  # inputs per Embed call (the API's limit)


def cmd_embed(args: argparse.Namespace) -> int:
    """Prints each input's vector, in the order of --text and --image on the command line."""
    if not args.inputs:
        print("error: give at least one --text TEXT or --image FILE", file=sys.stderr)
        return 2
    inputs = []
    for kind, value in args.inputs:
        if kind == "text":
            inputs.append(EmbedInput(text=value))
            continue
        try:
            inputs.append(EmbedInput(image=Path(value).read_bytes()))
        except OSError as exc:
            print(f"error: cannot read {value}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        parts = [client.embed(inputs[start:start + EMBED_CHUNK]) for start in range(0, len(inputs), EMBED_CHUNK)]
    vectors = [e.floats() for part in parts for e in part.embeddings]
    model, dim = parts[0].model, parts[0].dim
    if args.json:
        print(json.dumps({"model": model, "dim": dim, "embeddings": [
            {"kind": kind, "input": value, "vector": vector} for (kind, value), vector in zip(args.inputs, vectors)]}))
        return 0
    print(f"model: {model} (dim {dim})")
    for (kind, value), vector in zip(args.inputs, vectors):
        head = ", ".join(f"{x:.4f}" for x in vector[:4])
        label = json.dumps(value, ensure_ascii=False) if kind == "text" else value
        print(f"{kind} {label}: [{head}{', ...' if len(vector) > 4 else ''}] (dim {len(vector)})")
    return 0


# --- records: export, import, update, delete --where ---

UPDATE_CHUNK = 1000  # ids per UpdateRecords call (the API's limit)


def _where_or_usage(args: argparse.Namespace, expressions: Sequence[str]) -> Any:
    """The Filter of --where expressions (None for none); a usage error (exit 2) when one is not valid."""
    try:
        return where_filter(expressions)
    except ValueError as exc:
        args.subparser.error(str(exc))


def cmd_export(args: argparse.Namespace) -> int:
    """Writes the header and the records (clipsearch.records_file); to FILE through FILE.partial, renamed
    when complete, so that an interrupted export never leaves a file that looks whole."""
    from tqdm import tqdm

    from .records_file import export_records

    _where_or_usage(args, args.where)
    thumbnails = args.vectors and not args.no_thumbnails
    began = time.monotonic()
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        total = client.count(where_filter(args.where)) if sys.stderr.isatty() else None
        with tqdm(total=total, unit="rec", desc="exporting", disable=None) as bar:
            if args.file == "-":
                if hasattr(sys.stdout, "reconfigure"):
                    sys.stdout.reconfigure(encoding="utf-8", newline="\n")
                try:
                    export_records(client, sys.stdout, args.where or None, vectors=args.vectors,
                                   thumbnails=thumbnails, progress=bar.update)
                    sys.stdout.flush()
                except BrokenPipeError:  # the reader stopped early (`| head`): no traceback
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    return 1
                return 0
            path = Path(args.file)
            partial = path.with_name(path.name + ".partial")
            try:
                with open(partial, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
                    n = export_records(client, out, args.where or None, vectors=args.vectors,
                                       thumbnails=thumbnails, progress=bar.update)
                os.replace(partial, path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    seconds = time.monotonic() - began
    print(f"exported {n} records to {args.file} ({path.stat().st_size / 1e6:.1f} MB, {seconds:.1f} s, "
          f"{n / max(seconds, 1e-9):.0f} records/s{', with vectors' if args.vectors else ''}"
          f"{' and thumbnails' if thumbnails else ''})", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Checks every line, then writes the records; a file that cannot be imported writes nothing (exit 1)."""
    from tqdm import tqdm

    from .records_file import RecordsFileError, import_records

    name = "standard input" if args.file == "-" else args.file
    try:
        source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with source, Client(timeout=args.timeout, connection=_connection(args)) as client:
        with tqdm(unit="rec", desc="importing", disable=None) as bar:
            def total(n: int) -> None:
                bar.total = n
                bar.refresh()

            try:
                result = import_records(client, source, progress=bar.update, total=total)
            except RecordsFileError as exc:
                bar.close()
                print(f"error: {name}: {exc} (nothing was imported)", file=sys.stderr)
                return 1
    if args.json:
        print(json.dumps({"imported": result.imported, "batches": result.batches,
                          "seconds": round(result.seconds, 3)}))
    else:
        batches = f"{result.batches} batch{'' if result.batches == 1 else 'es'}"
        print(f"imported {result.imported} records from {name} ({batches}, {result.seconds:.1f} s, "
              f"{result.imported / max(result.seconds, 1e-9):.0f} records/s)")
    return 0


def _key_values(args: argparse.Namespace, option: str, items: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            args.subparser.error(f"{option} {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _set_fields(args: argparse.Namespace) -> dict[str, Any]:
    """--set KEY=VALUE as typed fields: VALUE as JSON (the field JSON of `index --metadata`: numbers,
    true/false, arrays of strings, {"$time": ...}) when it parses, else the text as a string."""
    from .fields import to_values

    fields: dict[str, Any] = {}
    for key, raw in _key_values(args, "--set", args.set):
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if value is None:
            args.subparser.error(f"--set {key}={raw}: null is not a value (remove a key with --unset {key})")
        try:
            fields.update(fields_from_json({key: value}, f"--set {key}={raw}"))
            to_values(fields)  # a float that is not finite
        except ValueError as exc:
            args.subparser.error(str(exc))
    return fields


def cmd_update(args: argparse.Namespace) -> int:
    """Prints "updated N"; ids that are not indexed are listed (on stderr, or as "not_found" with --json)
    and make the exit status 1."""
    where = _where_or_usage(args, args.where or [])
    fields = _set_fields(args)
    metadata = dict(_key_values(args, "--meta", args.meta))
    if not (fields or metadata or args.unset or args.replace):
        args.subparser.error("nothing to change: give --set KEY=VALUE, --meta KEY=VALUE, --unset KEY or --replace")
    options: dict[str, Any] = dict(set_fields=fields, set_metadata=metadata, unset=args.unset, replace=args.replace)
    updated, not_found, position = 0, [], 0
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        if args.ids:
            ids = list(dict.fromkeys(args.ids))
            for start in range(0, len(ids), UPDATE_CHUNK):
                result = client.update(ids[start:start + UPDATE_CHUNK], **options)
                updated, position = updated + result.updated, max(position, result.position)
                not_found += result.not_found
        else:
            result = client.update(where=where, **options)
            updated, not_found, position = result.updated, result.not_found, result.position
    if args.json:
        print(json.dumps({"updated": updated, "not_found": not_found, "position": position}))
    else:
        print(f"updated {updated}")
        for image_id in not_found:
            print(f"  not found: {image_id}", file=sys.stderr)
    return 1 if not_found else 0


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from .ui.app import allowed_hosts, serve
    except ImportError as exc:
        print(f"error: `clipsearch ui` needs aiohttp and Jinja2 ({exc}): pip install 'clipsearch[ui]'", file=sys.stderr)
        return 2
    try:
        hosts = allowed_hosts(args.host, args.allowed_host)
    except ValueError as exc:  # an --allowed-host that is not a host name
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(_connection(args), args.host, args.port, args.timeout, hosts=hosts)


def cmd_stats(args: argparse.Namespace) -> int:
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        s = client.stats()
        p = client.progress()
    data = {
        "count": s.count, "model": s.model, "dim": s.dim, "index_type": s.index_type,
        "hnsw_m": s.hnsw_m, "ef_construction": s.ef_construction, "ef_search": s.ef_search,
        "stale_entries": s.stale_entries,
        "index_kind": s.index_kind, "index_spec": s.index_spec, "training": s.training,
        "memory_bytes": s.memory_bytes, "bytes_per_vector": round(s.bytes_per_vector, 1), "disk_bytes": s.disk_bytes,
        "store": s.store_kind, "shard": f"{s.shard_index}/{s.shard_count}",
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
    """By ids (DeleteImages), or by --where / --all (DeleteRecords); prints the number deleted."""
    if args.ids and (args.where or args.all):
        args.subparser.error("give image ids, or --where EXPR (and --all), not both")
    if not (args.ids or args.where or args.all):
        args.subparser.error("give image ids, --where EXPR, or --all to delete every image")
    if not args.ids:
        where = _where_or_usage(args, args.where)
        with Client(timeout=args.timeout, connection=_connection(args)) as client:
            result = client.delete_where(where, all=args.all)
        print(f"deleted {result.deleted}")
        return 0
    with Client(timeout=args.timeout, connection=_connection(args)) as client:
        deleted, not_found = client.delete(args.ids)
    print(f"deleted {len(deleted)}")
    for image_id in not_found:
        print(f"  not found: {image_id}", file=sys.stderr)
    return 0
