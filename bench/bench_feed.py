"""Feeding a GPU: the ingest pipeline's own cost per image, with a model whose forward pass costs
almost nothing (the tiny test model), so that what is measured is everything around the model.

    python bench/bench_feed.py [--images 3000] [--runs path:0,path:1,path:2,upload:2] [--decode-threads 1]

Images: `--unique` distinct 640x480 photo-like JPEGs (~165 KB), written `--images` times in all under
a temp dir with different names. Each run starts its own Redis, server and workers (the server and the
workers at the same time; `startup s`, and the workers' own `warm-up s`, are reported; 1 torch thread
unless --worker-args say otherwise), submits every image in chunks of 64 through the Python client,
either by path (worker --allowed-root) or by upload, waits until all are indexed, and reports images/s
and CPU ms per image of the workers (with their decode processes), server, Redis and the submitting
process. A run is `mode:N[:T[:W]]`, N the worker's --decode-processes (0: T decode threads in the
worker process, default --decode-threads), W the number of workers (default 1), optionally followed
by worker arguments of that run alone (`path:2 --thumbnail-size 0`); a word NAME=value in upper case
sets an environment variable of the workers instead (`PYTHONPATH=...` runs another checkout's worker).
The same run also measures, in this process, one thread's PIL draft decode + preprocess per image and
the forward pass alone (`--no-stages` leaves that out, for a large model on a GPU machine).

On a GPU machine: `--model ViT-B-32 --pretrained none --width 1024 --height 768 --batch 256
--worker-args "--device cuda --threads 0 --device-decode" --no-stages` (scripts/gpu-bench.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import cpu_seconds, save, scrape, split_env, table  # noqa: E402
from clipsearch import Client, ImageInput  # noqa: E402
from clipsearch_core.images import LoadLimits, decode_image  # noqa: E402
from clipsearch_core.model import ModelSpec, load_encoder  # noqa: E402
from clipsearch_devkit.photos import photo_jpeg  # noqa: E402
from clipsearch_devkit.procs import Proc, Stack, free_port, start_redis, wait_for  # noqa: E402
from clipsearch_devkit.tinyclip import MODEL_SPEC  # noqa: E402

TINY = MODEL_SPEC


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (the worker's decode processes)."""
    try:
        return [int(p) for task in Path(f"/proc/{pid}/task").iterdir() for p in (task / "children").read_text().split()]
    except OSError:
        return []


def tree_cpu(pid: int, seen: dict[int, float], with_children: bool = True) -> float:
    """CPU seconds of a process and (unless with_children is false: the submitter, whose children are the
    other processes) its children; children that exited keep their last reading."""
    for p in [pid, *(children(pid) if with_children else [])]:
        try:
            seen[p] = cpu_seconds(p)
        except (OSError, IndexError):
            pass
    return sum(seen.values())


def stage_costs(model: str, photos: list[bytes], batch: int) -> dict[str, float]:
    """CPU ms per image (this process's CPU time, so that other load on the machine does not count) of one
    thread's decode + preprocess, and of the forward pass alone (1 torch thread)."""
    encoder = load_encoder(ModelSpec(model, "none", "cpu"), threads=1)
    limits = LoadLimits()
    t = time.process_time()
    tensors = [encoder.preprocess_uint8(decode_image(p, limits, draft_size=encoder.image_size)) for p in photos]
    decode = (time.process_time() - t) * 1000 / len(photos)
    encoder.encode_images(tensors[:batch])
    t = time.process_time()
    for start in range(0, len(tensors), batch):
        encoder.encode_images(tensors[start:start + batch])
    forward = (time.process_time() - t) * 1000 / len(tensors)
    return {"decode+preprocess cpu ms/img (1 thread)": decode, "forward cpu ms/img": forward}


def profile(folder: str, name: str, pid: int, gil: bool = False) -> subprocess.Popen:
    """py-spy sampling a process (and its decode processes) without pausing it, until SIGINT: raw
    collapsed stacks in folder/name.txt (one line per stack, idle threads left out; with `gil`, only
    the thread holding the GIL: where a process's serial Python time goes)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    spy = spy if spy.exists() else Path(shutil.which("py-spy") or "py-spy")  # a lent GPU machine: /tmp/site/bin
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--nonblocking", "--subprocesses", "--rate", "200",
                             "--format", "raw", "--output", str(Path(folder) / f"{name}.txt"),
                             *(["--gil"] if gil else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


STAGES = ("collect", "device_decode", "encode", "push", "finish")  # the worker's clipsearch_worker_stage_seconds
GENERIC_FRAMES = {"Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_bootstrap", "_bootstrap_inner", "run",
                  "_run_module_as_main", "_run_code", "<module>"}


def summarize(path: Path, top: int = 12) -> str:
    """The functions where a profile's samples were taken (the innermost frame), with their share of
    all samples, and each thread's share (by its own outermost frame, under threading's and runpy's):
    enough to read in a log."""
    leaves: Counter[str] = Counter()
    roots: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if len(frames) < 2 or not count.isdigit():
            continue
        leaves[frames[-1]] += int(count)
        inner = [f for f in frames[2:] if f not in GENERIC_FRAMES] or frames[-1:]
        roots[inner[0]] += int(count)
    total = sum(leaves.values()) or 1
    return "\n".join([f"{path.stem}: {total} samples", *(f"  {100 * n / total:5.1f} %  {name}" for name, n in
                                                          leaves.most_common(top)),
                       "  threads (by their outermost own frame):",
                       *(f"  {100 * n / total:5.1f} %  {name}" for name, n in roots.most_common(6))])


def start_workers(args: argparse.Namespace, stack: Stack, address: str, files: list[Path], processes: int,
                  threads: int, workers: int, own_args: str) -> tuple[list[Proc], list[int]]:
    """Starts a run's workers (each with its own metrics port); returns them and their ports."""
    pretrained = ["--pretrained", args.pretrained] if args.pretrained else []
    extra = [*pretrained, "--batch-size", str(args.batch), "--decode-threads", str(threads),
             "--allowed-root", str(files[0].parent)]
    if processes:
        extra += ["--decode-processes", str(processes)]
    words, env = split_env(args.worker_args.split() + own_args.split())
    extra += words
    # the environment is the workers' alone (e.g. PYTHONPATH=<another checkout>: compare two versions)
    stack = dataclasses.replace(stack, extra_env=env)
    ports = [free_port() for _ in range(workers)]
    return [stack.start_worker(address, [*extra, "--metrics-port", str(port)], name=f"worker{i}")
            for i, port in enumerate(ports)], ports


def run(args: argparse.Namespace, files: list[Path], tmp: Path, mode: str, processes: int, threads: int,
        workers: int, own_args: str, attempt: int) -> dict[str, float]:
    label = f"{mode}-p{processes}-t{threads}" + (f"-w{workers}" if workers > 1 else "")
    begun = time.perf_counter()
    redis, url = start_redis(tmp / "logs")
    stack = Stack(model=args.model, redis_url=url, log_dir=tmp / "logs", prefix=f"feed-{label}-{attempt}")
    pretrained = ["--pretrained", args.pretrained] if args.pretrained else []
    # The server and the workers load their models at the same time (a worker reaches the server only to push).
    port = free_port()
    pool = ThreadPoolExecutor(1)
    starting = pool.submit(stack.start_server, tmp / f"data-{label}-{attempt}", port, pretrained, 300)
    pool.shutdown(wait=False)
    started: list[Proc] = []
    server: Proc | None = None  # start_server kills a server that did not start
    try:
        started, ports = start_workers(args, stack, f"127.0.0.1:{port}", files, processes, threads, workers, own_args)
        server, address = starting.result()
        for worker in started:
            wait_for(lambda: "ready" in worker.output(), 300, worker.name, worker.popen)
        time.sleep(1.0)  # decode processes started
        startup = time.perf_counter() - begun
        client = Client(address, timeout=120)
        spies = [profile(args.profile, f"{label}-{attempt}-{name}", proc.popen.pid, args.gil) for name, proc in
                 (("worker", started[0]), ("server", server))] if args.profile else []
        procs = {**{f"worker{i}": w.popen.pid for i, w in enumerate(started)}, "server": server.popen.pid,
                 "redis": redis.popen.pid, "submitter": os.getpid()}
        seen: dict[str, dict[int, float]] = {k: {} for k in procs}
        before = {k: tree_cpu(pid, seen[k], k != "submitter") for k, pid in procs.items()}
        metrics = [scrape(port) for port in ports]
        t = time.perf_counter()
        batch = ""
        for start in range(0, len(files), 64):
            chunk = files[start:start + 64]
            images = [ImageInput(uri=str(f), id=f"{label}-{start + i}") if mode == "path" else
                      ImageInput(image=f.read_bytes(), id=f"{label}-{start + i}") for i, f in enumerate(chunk)]
            batch = client.submit(images, batch).batch_id
        submitted = time.perf_counter() - t
        while not (progress := client.progress(batch)).done:
            for i in range(workers):
                tree_cpu(procs[f"worker{i}"], seen[f"worker{i}"])
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
        per_process = {k: (tree_cpu(pid, seen[k], k != "submitter") - before[k]) * 1000 / len(files)
                       for k, pid in procs.items()}
        ended = [scrape(port) for port in ports]

        def share(sample: str) -> float:  # of the wall time, per worker
            return sum(e.get(sample, 0.0) - m.get(sample, 0.0) for e, m in zip(ended, metrics)) / elapsed / workers

        stages = {f"{stage} share": share(f'clipsearch_worker_stage_seconds_sum{{stage="{stage}"}}')
                  for stage in STAGES}
        cpu = {"model busy share": share("clipsearch_worker_encode_seconds_sum"), **stages,
               "worker cpu ms/img": sum(v for k, v in per_process.items() if k.startswith("worker")),
               **{f"{k} cpu ms/img": v for k, v in per_process.items() if not k.startswith("worker")}}
        if progress.indexed != len(files):  # why, in the log; the run's figures are kept (main exits 1)
            reasons = Counter(f.reason for f in client.failures(batch, limit=1000))
            print(f"IMAGES FAILED in {label} {own_args}: {progress}; reasons {dict(reasons.most_common(5))}",
                  flush=True)
            for proc in (server, *started):
                errors = [line for line in proc.output().splitlines()
                          if re.search(r"ERROR|WARNING|Traceback|refused", line)]
                print(f"  {proc.name}: {len(errors)} error lines", *errors[-8:], sep="\n    ", flush=True)
        client.close()
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
            spy.wait(timeout=60)
        for name in ("worker", "server") if spies else ():
            path = Path(args.profile) / f"{label}-{attempt}-{name}.txt"
            print(summarize(path) if path.exists() else f"no profile {path}", flush=True)
        warm = [re.search(r"warmed up in ([0-9.]+) s", w.output()) for w in started]  # before "ready", unmeasured
        return {"run": f"{label} {own_args}".strip(), "img/s": len(files) / elapsed, "failed": progress.failed,
                "submit s": submitted, "startup s": startup,
                "warm-up s": max(float(m.group(1)) for m in warm) if all(warm) else float("nan"), **cpu}
    finally:
        for worker in started:
            worker.stop()
        if server is None and starting.exception() is None:  # failed before taking it: waits for its start
            server = starting.result()[0]
        if server is not None:
            server.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY)
    parser.add_argument("--pretrained", default="",
                        help="--pretrained of the server and workers (none: random weights)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--unique", type=int, default=100)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--no-stages", action="store_true", help="leave out the in-process decode and forward costs")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--decode-threads", type=int, default=1, help="worker --decode-threads (with 0 processes)")
    parser.add_argument("--runs", default="path:0,path:1,path:2,upload:0,upload:2",
                        help="comma-separated mode:decode_processes[:decode_threads[:workers]], "
                             "mode path or upload; a run named twice is measured twice "
                             "(interleave A,B,A,B to compare under drift)")
    parser.add_argument("--profile", default="", help="folder for py-spy profiles of each run's worker and server")
    parser.add_argument("--gil", action="store_true", help="profile only the threads holding the GIL")
    parser.add_argument("--worker-args", default="", help="extra worker arguments for every run")
    parser.add_argument("--name", default="feed")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the started processes on `kill` too

    photos = [photo_jpeg(i, args.width, args.height) for i in range(args.unique)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        files = []
        for i in range(args.images):
            path = folder / f"photo-{i:05d}.jpg"
            path.write_bytes(photos[i % len(photos)])
            files.append(path)
        stages = {} if args.no_stages else stage_costs(args.model, photos, args.batch)
        for attempt, spec in enumerate(args.runs.split(",")):
            shape, _, own_args = spec.strip().partition(" ")
            mode, processes, threads, workers, *_ = f"{shape}:::".split(":")
            rows.append(run(args, files, Path(tmp), mode, int(processes or 0), int(threads or args.decode_threads),
                            int(workers or 1), own_args, attempt))
            print(rows[-1], flush=True)
    kb = sum(map(len, photos)) / len(photos) / 1024
    print(f"\n== feed, {args.model}, {args.images} JPEGs {args.width}x{args.height} of {kb:.0f} KB, "
          f"batch {args.batch}, {os.cpu_count()} cores, worker args {args.worker_args!r} ==")
    print({k: round(v, 3) for k, v in stages.items()})
    table(rows, ["run", *(f"{stage} share" for stage in STAGES)])
    table(rows, ["run", "img/s", "failed", "submit s", "startup s", "warm-up s", "model busy share",
                 "worker cpu ms/img", "server cpu ms/img", "redis cpu ms/img", "submitter cpu ms/img"])
    save(args.name, {"model": args.model, "images": args.images, "size": f"{args.width}x{args.height}",
                     "worker_args": args.worker_args, "kb_per_image": kb, "batch": args.batch,
                     "decode_threads": args.decode_threads, **stages, "rows": rows})
    if any(row["failed"] for row in rows):
        sys.exit("images failed (reasons above): these figures count them as done")


if __name__ == "__main__":
    main()
