"""Ingest efficiency: images/s from submission until searchable through the real queue, worker and
server, divided by the images/s of a plain batched forward pass of the same model on the same
machine in the same run; and the seed script's one-image-at-a-time loop for reference.

    python bench/bench_ingest.py [--model ViT-B-32 --pretrained none] [--images 256] [--batch 32]

Two image sets: 1024x768 photo-like JPEGs (~280 KB) and small 256x256 JPEGs. The plain forward pass
gets preprocessed tensors for free; the pipeline must read, decode, resize and normalize as well.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import cpu_seconds, save, table  # noqa: E402
from clipsearch import Client, ImageInput  # noqa: E402
from clipsearch_core.model import ModelSpec, load_encoder  # noqa: E402
from tests.photos import photo_jpeg  # noqa: E402
from tests.procs import Stack, free_port, start_redis, wait_for  # noqa: E402


def forward_rate(encoder, tensors: list, batch: int) -> float:  # type: ignore[no-untyped-def]
    encoder.encode_images(tensors[:batch])  # warm-up
    t = time.perf_counter()
    for start in range(0, len(tensors), batch):
        encoder.encode_images(tensors[start:start + batch])
    return len(tensors) / (time.perf_counter() - t)


def seed_loop_rate(encoder, photos: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    """The seed script: open, convert, preprocess and encode one image at a time."""
    t = time.perf_counter()
    for data in photos:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        encoder.encode_images([encoder.preprocess(image)])
    return len(photos) / (time.perf_counter() - t)


def scrape(port: int) -> dict[str, float]:
    """Unlabelled samples of a Prometheus /metrics page."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in text.splitlines() if line and not line.startswith("#") and "{" not in line)}


def pipeline_rate(args: argparse.Namespace, photos: list[bytes], tmp: Path, label: str) -> dict[str, float]:
    """Images/s from the first submission until all are indexed, and CPU ms per image of each process."""
    redis, url = start_redis(tmp / "logs")
    stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix=f"bench-{label}")
    stack.common = lambda: ["--model", args.model, "--pretrained", args.pretrained, "--redis-url", url,  # type: ignore[method-assign]
                            "--redis-prefix", stack.prefix, "--device", args.device]
    server, address = stack.start_server(tmp / f"data-{label}", timeout=600)
    metrics_port = free_port()
    worker = stack.start_worker(address, ["--metrics-port", str(metrics_port), "--batch-size", str(args.batch), "--decode-threads", str(args.decode_threads),
                                          "--threads", str(args.threads),
                                          *(["--device-decode"] if args.device_decode else [])])
    try:
        wait_for(lambda: "ready" in worker.output(), 600, "worker", worker.popen)
        client = Client(address, timeout=120)
        procs = {"worker": worker.popen.pid, "server": server.popen.pid, "redis": redis.popen.pid, "submitter": os.getpid()}
        cpu_before = {k: cpu_seconds(pid) for k, pid in procs.items()}
        t = time.perf_counter()
        batch = ""
        for start in range(0, len(photos), 64):
            batch = client.submit([ImageInput(image=p, id=f"{label}-{start + i}")
                                   for i, p in enumerate(photos[start:start + 64])], batch).batch_id
        while not client.progress(batch).done:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
        cpu = {f"{k} cpu ms/img": (cpu_seconds(pid) - cpu_before[k]) * 1000 / len(photos) for k, pid in procs.items()}
        scraped = scrape(metrics_port)  # the worker's own split of its time
        cpu["model busy share"] = scraped.get("clipsearch_worker_encode_seconds_sum", 0.0) / elapsed
        cpu["batches"] = scraped.get("clipsearch_worker_batch_seconds_count", 0.0)
        assert client.stats().count == len(photos), client.stats()
        client.close()
        return {"pipeline img/s": len(photos) / elapsed, **cpu}
    finally:
        worker.stop()
        server.stop()
        redis.stop()


def repeated(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the worker (0: default)")
    parser.add_argument("--device-decode", action="store_true", help="worker decodes JPEGs on the model's device")
    parser.add_argument("--sets", default="photos,small", help="image sets to run: photos, small")
    parser.add_argument("--unique", type=int, default=0, help="distinct images generated, repeated to --images (0: all)")
    parser.add_argument("--name", default="ingest")
    args = parser.parse_args()

    encoder = load_encoder(ModelSpec(args.model, args.pretrained, args.device))
    wanted = args.sets.split(",")
    unique = args.unique or args.images
    sets = {}
    if "photos" in wanted:
        sets["photos 1024x768"] = repeated([photo_jpeg(i) for i in range(unique)], args.images)
    if "small" in wanted:
        sets["small 256x256"] = repeated([photo_jpeg(i, 256, 256) for i in range(unique)], args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, photos in sets.items():
            tensors = repeated([encoder.preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in photos[:unique]],
                               len(photos))
            forward = forward_rate(encoder, tensors, args.batch)
            seed = seed_loop_rate(encoder, photos[: max(32, len(photos) // 4)])
            measured = pipeline_rate(args, photos, Path(tmp), label.split()[0])
            pipeline = measured["pipeline img/s"]
            forward_after = forward_rate(encoder, tensors, args.batch)  # bracket the pipeline run
            reference = (forward + forward_after) / 2
            rows.append({"images": label, "kb/image": sum(map(len, photos)) / len(photos) / 1024,
                         "forward img/s": reference, "pipeline img/s": pipeline, "efficiency": pipeline / reference,
                         "seed loop img/s": seed, "seed ratio": seed / reference, **measured})
    print(f"\n== ingest, {args.model} ({args.pretrained}), device {encoder.device}, batch {args.batch} ==")
    table(rows, ["images", "kb/image", "forward img/s", "pipeline img/s", "efficiency", "seed loop img/s", "seed ratio"])
    table(rows, ["images", "model busy share", "batches", "worker cpu ms/img", "server cpu ms/img", "redis cpu ms/img", "submitter cpu ms/img"])
    save(args.name, {"model": args.model, "pretrained": args.pretrained, "device": encoder.device,
                     "device_decode": args.device_decode,
                     "torch_threads": torch.get_num_threads(), "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
