"""The server's cost of taking vectors: UpsertVectors of worker-sized batches (256 records of 512-d
vectors, a uri, two metadata keys and a ~3 KB WebP thumbnail each) from several concurrent pushers, as
several GPU workers send them. Reports records/s and the server's CPU ms per record (what bounds how many
images/s one server can index: at 4,000 img/s per GPU, one server must take 4,000 records/s), and with
`--profile DIR` where the server's samples go (py-spy).

    python bench/bench_upsert.py [--records 20480] [--batch 256] [--pushers 2] [--no-thumbnails]
        [--server-args "--index-type flat"] [--profile bench/results/profile-upsert]
        [--checkout before=/path/to/other/checkout --rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_feed import profile, summarize  # noqa: E402
from bench.common import checkout_env, checkouts, cpu_seconds, save, table  # noqa: E402
from clipsearch.v1 import (
    index_service_pb2 as index_pb,  # noqa: E402
    index_service_pb2_grpc as index_grpc,  # noqa: E402
    types_pb2,  # noqa: E402
)
from clipsearch_devkit.photos import photo_jpeg  # noqa: E402
from clipsearch_devkit.procs import Stack, start_redis  # noqa: E402

MODEL = "ViT-B-32@random-seed0"  # the identity of ViT-B-32 with --pretrained none
DIM = 512


def requests(args: argparse.Namespace) -> list[index_pb.UpsertVectorsRequest]:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg(1, 256, 192))).save(buf, format="WEBP", quality=80, method=2)
    thumb = types_pb2.Thumbnail(data=buf.getvalue(), mime_type="image/webp") if args.thumbnails else None
    out = []
    for start in range(0, args.records, args.batch):
        vectors = rng.standard_normal((min(args.batch, args.records - start), DIM)).astype("<f4")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out.append(index_pb.UpsertVectorsRequest(
            model=types_pb2.ModelInfo(name=MODEL, dim=DIM),
            records=[index_pb.VectorRecord(id=f"img-{start + i}", vector=v.tobytes(), uri=f"/photos/{start + i}.jpg",
                                           metadata={"camera": "x100", "album": str((start + i) % 50)},
                                           submitted_at_ms=1_700_000_000_000 + start + i, thumbnail=thumb)
                     for i, v in enumerate(vectors)]))
    return out


def run(args: argparse.Namespace, tmp: Path, checkout: Path) -> dict[str, float]:
    redis, url = start_redis(tmp / "logs")
    stack = Stack(model="ViT-B-32", redis_url=url, log_dir=tmp / "logs", prefix="upsert")
    if checkout != ROOT:  # that checkout's server (and the core and client it imports)
        stack.extra_env = checkout_env(checkout, ("server", "core", "client"))
    server, address = stack.start_server(tmp / "data", timeout=300,
                                         extra=["--pretrained", "none", *shlex.split(args.server_args)])
    try:
        batches = requests(args)
        channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = index_grpc.IndexServiceStub(channel)
        stub.UpsertVectors(batches[0], timeout=120)  # warm-up: first index add, store tables
        spy = profile(args.profile, "server", server.popen.pid) if args.profile else None
        before, t = cpu_seconds(server.popen.pid), time.perf_counter()
        with ThreadPoolExecutor(args.pushers) as pool:
            done = sum(r.upserted for r in pool.map(lambda b: stub.UpsertVectors(b, timeout=300), batches[1:]))
        elapsed, cpu = time.perf_counter() - t, cpu_seconds(server.popen.pid) - before
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            print(summarize(Path(args.profile) / "server.txt", top=20), flush=True)
        channel.close()
        assert done == sum(len(b.records) for b in batches[1:]), done
        return {"records/s": done / elapsed, "server cpu ms/record": 1000 * cpu / done,
                "server cores busy": cpu / elapsed}
    finally:
        server.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20480)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pushers", type=int, default=2, help="concurrent UpsertVectors callers (workers)")
    parser.add_argument("--no-thumbnails", dest="thumbnails", action="store_false")
    parser.add_argument("--server-args", default="", help="extra server options, e.g. \"--index-type flat\"")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--checkout", action="append", default=[],
                        help="NAME=PATH of another checkout whose server to compare, round by round")
    parser.add_argument("--profile", default="", help="folder for a py-spy profile of the server")
    parser.add_argument("--name", default="upsert")
    args = parser.parse_args()
    compared = checkouts(args.checkout, ROOT)
    rows = []
    for round_ in range(args.rounds):
        for name, path in compared:
            with tempfile.TemporaryDirectory(prefix="bench-upsert-") as tmp:
                rows.append({"server": name, "round": round_, **run(args, Path(tmp), path)})
            print(rows[-1], flush=True)
    print(f"\n== UpsertVectors, {args.records} records of {DIM}-d in batches of {args.batch}, {args.pushers} pushers, "
          f"thumbnails {'on' if args.thumbnails else 'off'} {args.server_args} ({os.cpu_count()} cores) ==")
    table(rows, ["server", "round", "records/s", "server cpu ms/record", "server cores busy"])
    save(args.name, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
