"""Ingest efficiency: images/s from submission until searchable through the real queue, worker and
server, divided by the images/s of a plain batched forward pass of the same model on the same
machine, measured interleaved (forward, variant A, variant B, ..., forward, A, B, ...) so that drift
of a shared machine between runs does not decide the ratio; and the seed script's
one-image-at-a-time loop for reference.

    python bench/bench_ingest.py [--model ViT-B-32 --pretrained none] [--images 192] [--rounds 3]
        [--variants "default=;threads1=--threads 1;serial=--decode-overlap off"]

A variant is `name=worker arguments`; a word `NAME=value` in upper case is an environment variable of
the worker instead (e.g. `OMP_WAIT_POLICY=PASSIVE`). Each variant gets its own Redis, server and
worker, started once and kept for all rounds; each round submits fresh ids. A variant's efficiency
in a round is its images/s over the mean of the forward passes measured just before and just after
it; the result is the median over rounds.

Two image sets: 1024x768 photo-like JPEGs (~177 KB) and small 256x256 JPEGs. The plain forward pass
gets preprocessed tensors for free; the pipeline must read, decode, resize and normalize as well.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

import clipsearch_core  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import cpu_seconds, save, scrape, split_env, table  # noqa: E402
from clipsearch import Client, ImageInput  # noqa: E402
from clipsearch_core.model import ModelSpec, load_encoder  # noqa: E402
from clipsearch_devkit.photos import photo_jpeg  # noqa: E402
from clipsearch_devkit.procs import Proc, Stack, free_port, start_redis, wait_for  # noqa: E402


def forward_rate(encoder, tensors: list, batch: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Images/s of the plain batched forward pass, and the CPU ms per image it used (all its threads)."""
    encoder.encode_images(tensors[:batch])  # warm-up
    t, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(tensors), batch):
        encoder.encode_images(tensors[start:start + batch])
    return len(tensors) / (time.perf_counter() - t), (time.process_time() - cpu) * 1000 / len(tensors)


def seed_loop_rate(encoder, photos: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    """The seed script: open, convert, preprocess and encode one image at a time."""
    t = time.perf_counter()
    for data in photos:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        encoder.encode_images([encoder.preprocess(image)])
    return len(photos) / (time.perf_counter() - t)


def parse_variant(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """`name=args...` -> (name, worker arguments, worker environment)."""
    name, _, rest = spec.partition("=")
    return (name.strip(), *split_env(rest.split()))


@dataclass
class Pipeline:
    """One variant's running stack: Redis, server and worker, reused by every round."""

    name: str
    address: str
    metrics_port: int
    procs: dict[str, int]


def start_pipeline(args: argparse.Namespace, spec: str, tmp: Path, closing: ExitStack) -> Pipeline:
    name, worker_args, env = parse_variant(spec)
    redis, url = start_redis(tmp / "logs")
    closing.callback(redis.stop)
    stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix=f"bench-{name}", extra_env=env)
    stack.common = lambda: ["--model", args.model, "--pretrained", args.pretrained, "--redis-url", url,  # type: ignore[method-assign]
                            "--redis-prefix", stack.prefix, "--device", args.device]
    server, address = stack.start_server(tmp / f"data-{name}", timeout=600)
    closing.callback(server.stop)
    metrics_port = free_port()
    worker: Proc = stack.start_worker(address, ["--metrics-port", str(metrics_port), "--batch-size", str(args.batch),
                                                "--decode-threads", str(args.decode_threads),
                                                "--threads", str(args.threads),
                                                *(["--device-decode"] if args.device_decode else []), *worker_args])
    closing.callback(worker.stop)
    wait_for(lambda: "ready" in worker.output(), 600, "worker", worker.popen)
    return Pipeline(name, address, metrics_port,
                    {"worker": worker.popen.pid, "server": server.popen.pid, "redis": redis.popen.pid,
                     "submitter": os.getpid()})


def pipeline_rate(pipe: Pipeline, photos: list[bytes], label: str) -> dict[str, float]:
    """Images/s from the first submission until all are indexed, and CPU ms per image of each process."""
    client = Client(pipe.address, timeout=120)
    count = client.stats().count
    before = scrape(pipe.metrics_port)
    cpu_before = {k: cpu_seconds(pid) for k, pid in pipe.procs.items()}
    t = time.perf_counter()
    batch = ""
    for start in range(0, len(photos), 64):
        batch = client.submit([ImageInput(image=p, id=f"{label}-{start + i}")
                               for i, p in enumerate(photos[start:start + 64])], batch).batch_id
    while not client.progress(batch).done:
        time.sleep(0.05)
    elapsed = time.perf_counter() - t
    cpu = {f"{k} cpu ms/img": (cpu_seconds(pid) - cpu_before[k]) * 1000 / len(photos) for k, pid in pipe.procs.items()}
    after = scrape(pipe.metrics_port)  # the worker's own split of its time

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    cpu["pipeline cpu ms/img"] = sum(cpu.values())
    cpu["model busy share"] = delta("clipsearch_worker_encode_seconds_sum") / elapsed
    cpu["batches"] = delta("clipsearch_worker_batch_seconds_count")
    assert client.stats().count == count + len(photos), client.stats()
    client.close()
    return {"pipeline img/s": len(photos) / elapsed, **cpu}


def repeated(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0] if isinstance(runs[0][key], float)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (forward, each variant)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the worker (0: default)")
    parser.add_argument("--variants", default="default=",
                        help="';'-separated name=worker arguments (upper-case NAME=value words: environment)")
    parser.add_argument("--device-decode", action="store_true", help="every worker decodes JPEGs on the model's device")
    parser.add_argument("--sets", default="photos,small", help="image sets to run: photos, small")
    parser.add_argument("--unique", type=int, default=0,
                        help="distinct images generated, repeated to --images (0: all)")
    parser.add_argument("--seed-loop", action="store_true", help="also time the seed's one-image-at-a-time loop")
    parser.add_argument("--name", default="ingest")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the started processes on `kill` too

    encoder = load_encoder(ModelSpec(args.model, args.pretrained, args.device))
    wanted = args.sets.split(",")
    unique = args.unique or args.images
    sets = {}
    if "photos" in wanted:
        sets["photos 1024x768"] = repeated([photo_jpeg(i) for i in range(unique)], args.images)
    if "small" in wanted:
        sets["small 256x256"] = repeated([photo_jpeg(i, 256, 256) for i in range(unique)], args.images)
    variants = [v for v in args.variants.split(";") if v.strip()]
    rows, rounds = [], []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as closing:
        pipes = [start_pipeline(args, spec, Path(tmp), closing) for spec in variants]
        for label, photos in sets.items():
            tensors = repeated([encoder.preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in photos[:unique]],
                               len(photos))
            seed = seed_loop_rate(encoder, photos[: max(32, len(photos) // 4)]) if args.seed_loop else None
            forwards = [forward_rate(encoder, tensors, args.batch)]
            measured: dict[str, list[dict[str, float]]] = {pipe.name: [] for pipe in pipes}
            for r in range(args.rounds):
                for pipe in pipes:  # each variant between two forward passes
                    run = pipeline_rate(pipe, photos, f"{label.split()[0]}-{r}")
                    forwards.append(forward_rate(encoder, tensors, args.batch))
                    run["forward img/s"] = (forwards[-2][0] + forwards[-1][0]) / 2
                    run["forward cpu ms/img"] = (forwards[-2][1] + forwards[-1][1]) / 2
                    run["efficiency"] = run["pipeline img/s"] / run["forward img/s"]
                    run["cpu efficiency"] = run["forward cpu ms/img"] / run["pipeline cpu ms/img"]
                    measured[pipe.name].append(run)
                    rounds.append({"images": label, "variant": pipe.name, "round": r, **run})
                    print({k: round(v, 3) if isinstance(v, float) else v for k, v in rounds[-1].items()}, flush=True)
            for name, runs in measured.items():
                row = {"images": label, "variant": name, "kb/image": sum(map(len, photos)) / len(photos) / 1024,
                       **median_row(runs), "efficiencies": " ".join(f"{run['efficiency']:.2f}" for run in runs)}
                if seed is not None:
                    row["seed loop img/s"], row["seed ratio"] = seed, seed / row["forward img/s"]
                rows.append(row)
    print(f"\n== ingest, {args.model} ({args.pretrained}), device {encoder.device}, batch {args.batch}, "
          f"medians of {args.rounds} interleaved rounds ==")
    table(rows, ["images", "variant", "kb/image", "forward img/s", "pipeline img/s", "efficiency", "efficiencies",
                 "cpu efficiency",
                 "seed loop img/s", "seed ratio"])
    table(rows, ["images", "variant", "model busy share", "batches", "forward cpu ms/img", "worker cpu ms/img",
                 "server cpu ms/img", "redis cpu ms/img", "submitter cpu ms/img"])
    save(args.name, {"model": args.model, "pretrained": args.pretrained, "device": encoder.device,
                     "variants": variants, "device_decode": args.device_decode,
                     "torch_threads": torch.get_num_threads(), "batch": args.batch,
                     "decode_threads": args.decode_threads, "rows": rows, "rounds": rounds})


if __name__ == "__main__":
    main()
