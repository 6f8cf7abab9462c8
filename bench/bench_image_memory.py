"""Memory of hostile images: the peak RSS a real server (ImageSearch) and a real worker (SubmitImages)
reach for the worst image shapes, one at a time and eight at once.

Shapes: the largest images --max-pixels allows (8000 x 8000, and 20:1, the widest --max-aspect-ratio
allows), and the long thin ones that cost far more than their pixel count once the model's resize
enlarges their short side (16 x 4,000,000; 1 x 64,000,000), all as small PNGs (a few KB to 130 KB).
Each process's peak is reset before each case (`/proc/PID/clear_refs` 5, Linux) and read after it
(VmHWM): the figure is the peak minus the RSS it had before the case.

Against another checkout (`--checkout before=PATH`), the cases that would take that code past
`--old-limit-gb` by the issue's measurements (the thin shapes, eight at once: 8 x 6 GB) are left out.

    python bench/bench_image_memory.py [--model local-dir:devkit/clipsearch_devkit/tinyclip/model]
        [--checkout before=/path]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import checkout_env, checkouts, save, table  # noqa: E402
from clipsearch import Client, ClipsearchError, ImageInput  # noqa: E402
from clipsearch_devkit.procs import Proc, Stack, start_redis, wait_for  # noqa: E402
from clipsearch_devkit.tinyclip import MODEL_SPEC  # noqa: E402

SHAPES = {"8000x8000": (8000, 8000), "35760x1788 (20:1)": (35760, 1788), "16x4000000": (16, 4_000_000),
          "1x64000000": (1, 64_000_000)}
THIN = ("16x4000000", "1x64000000")


def png(size: tuple[int, int]) -> bytes:
    """A PNG of that size with some drawing on it (a decoder sees structure, the file stays small)."""
    image = Image.new("RGB", size, (30, 90, 200))
    draw = ImageDraw.Draw(image)
    for i in range(0, max(size), max(1, max(size) // 50)):
        draw.line([(i % size[0], 0), (size[0] - 1 - i % size[0], size[1] - 1)], fill=(220, 40, 40), width=3)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def rss_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(field + ":"))


def peak_of(pid: int, run: "callable") -> tuple[float, float]:  # type: ignore[valid-type]
    """(MB the process's peak rose above its RSS before `run`, seconds `run` took)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    before = rss_mb(pid, "VmRSS")
    started = time.perf_counter()
    run()
    return rss_mb(pid, "VmHWM") - before, time.perf_counter() - started


def searches(address: str, data: bytes, n: int, text_ms: list[float]) -> str:
    """n ImageSearch calls at once; the outcome ("ok" or the first error's code and message). Meanwhile one
    client runs TextSearch after TextSearch: the slowest goes into `text_ms` (do large images stall others?)."""
    outcomes: list[str] = []
    done = threading.Event()

    def texts() -> None:
        with Client(address, timeout=300) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.text_search("a red circle", k=1)
                text_ms.append(1000 * (time.perf_counter() - started))

    def one() -> None:
        try:
            with Client(address, timeout=300) as client:
                client.image_search(image=data, k=1)
            outcomes.append("ok")
        except ClipsearchError as exc:
            outcomes.append(f"{exc.code.name}: {exc.details[:80]}")

    prober = threading.Thread(target=texts)
    prober.start()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    done.set()
    prober.join(timeout=60)
    return sorted(set(outcomes), key=outcomes.index)[0] if len(set(outcomes)) == 1 else "; ".join(sorted(set(outcomes)))


def ingest(address: str, data: bytes, n: int, tag: str) -> str:
    """n images in one SubmitImages, waited for; the outcome (indexed/failed and the first reason)."""
    with Client(address, timeout=60) as client:
        batch = client.submit([ImageInput(image=data, id=f"{tag}-{i}") for i in range(n)]).batch_id
        deadline = time.monotonic() + 900
        while not client.progress(batch).done and time.monotonic() < deadline:
            time.sleep(0.2)
        progress = client.progress(batch)
        failures = client.failures(batch)
    reason = f" ({failures[0].reason[:80]})" if failures else ""
    return f"indexed {progress.indexed}, failed {progress.failed}{reason}"


def run_checkout(name: str, path: Path, args: argparse.Namespace, url: str, tmp: Path, datas: dict[str, bytes],
                 rows: list[dict]) -> None:
    stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix=f"mem-{name}")
    if path != ROOT:
        stack.extra_env = checkout_env(path, ("server", "encoder_worker", "core", "client"))
    model_args = ["--pretrained", args.pretrained]
    server, address = stack.start_server(tmp / f"data-{name}", timeout=300, extra=model_args)
    worker: Proc | None = None
    try:
        worker = stack.start_worker(address, [*model_args, "--batch-size", "8", "--thumbnail-size", "0"])
        wait_for(lambda: "ready" in worker.output(), 300, "worker", worker.popen)
        for shape, data in datas.items():
            for n in (1, 8):
                if path != ROOT and shape in THIN and n * args.old_per_image_gb > args.old_limit_gb:
                    continue
                text_ms: list[float] = []
                for role, proc, fn in (("server", server, lambda: searches(address, data, n, text_ms)),
                                       ("worker", worker, lambda: ingest(address, data, n, f"{shape}-{n}"))):
                    if role not in args.roles:
                        continue
                    outcome: list[str] = []
                    mb, seconds = peak_of(proc.popen.pid, lambda: outcome.append(fn()))
                    rows.append({"code": name, "process": role, "shape": shape, "at once": n, "peak +MB": mb,
                                 "s": seconds, "outcome": outcome[0] if outcome else "",
                                 "alive": proc.popen.poll() is None,
                                 "text max ms": max(text_ms) if role == "server" and text_ms else None})
                    print(rows[-1], flush=True)
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL_SPEC)
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--checkout", action="append", default=[], help="NAME=PATH of another checkout to compare")
    parser.add_argument("--old-limit-gb", type=float, default=8.0, help="leave out another checkout's cases "
                        "expected to exceed this much memory")
    parser.add_argument("--old-per-image-gb", type=float, default=6.0, help="what one thin image cost before")
    parser.add_argument("--name", default="image-memory", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--shapes", type=lambda v: v.split(","), default=list(SHAPES),
                        help=f"comma-separated, from: {', '.join(SHAPES)}")
    parser.add_argument("--roles", type=lambda v: v.split(","), default=["server", "worker"])
    args = parser.parse_args()
    datas = {shape: png(size) for shape, size in SHAPES.items() if shape in args.shapes}
    print({shape: f"{len(data) / 1024:.0f} KB" for shape, data in datas.items()}, flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        redis, url = start_redis(Path(tmp) / "logs")
        try:
            for name, path in checkouts(args.checkout, ROOT):
                run_checkout(name, path, args, url, Path(tmp), datas, rows)
        finally:
            redis.stop()
    print(f"\n== peak RSS above the process's RSS before each case, {args.model} ==")
    table(rows, ["code", "process", "shape", "at once", "peak +MB", "s", "text max ms", "alive", "outcome"])
    save(args.name, {"args": vars(args), "rows": rows,
                     "sizes_kb": {shape: len(data) / 1024 for shape, data in datas.items()}})


if __name__ == "__main__":
    main()
