"""Starting and stopping: how long a server and a worker take to start and from SIGTERM to exit, and
what one full garbage collection costs in a loaded process, with the collector held off during start-up
and the start-up heap frozen (clipsearch_core.heap), and without.

Each round starts a real server and a real worker (exec'd, ViT-B-32 with random weights unless --model
says otherwise) of each checkout compared, in turn, waits until both are ready, leaves them idle for
1-2 s (a different fraction each round, the same for every checkout: the worker is then somewhere in
its 1 s blocking read of the queue), then sends SIGTERM to the worker and then to the server and times
each exit. A rolling restart, `clipsearch up`'s Ctrl-C and every test that stops a process wait that
long. The collection pause is measured inside one process that loads what a server loads:
gc.collect() before and after heap.freeze().

    python bench/bench_stop.py [--rounds 3] [--model ViT-B-32] [--checkout before=/path/to/other/checkout]
        [--name stop]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import checkout_env, checkouts, save, table  # noqa: E402
from clipsearch_devkit.procs import Proc, Stack, start_redis, wait_for  # noqa: E402

# run in a fresh process: load what a server loads, then time full collections before and after freezing
PAUSE = """
import gc, json, sys, time
from clipsearch_core import heap
heap.hold()  # as the programs do
from clipsearch_core.model import ModelSpec, load_encoder
import clipsearch_server.app  # faiss, grpc, the store, the index
encoder = load_encoder(ModelSpec(sys.argv[1], sys.argv[2], "cpu"), 1)
encoder.warm_up(1, 1)
def pause():
    t = time.perf_counter(); gc.collect(); return time.perf_counter() - t
pause()
before = min(pause() for _ in range(3))
frozen = heap.freeze()
after = min(pause() for _ in range(3))
print(json.dumps({"objects": frozen, "collect_ms": 1000 * before, "collect_frozen_ms": 1000 * after}))
"""


def stopped_in(proc: Proc, timeout: float = 60) -> float:
    """Seconds from SIGTERM to the process's exit."""
    t = time.perf_counter()
    proc.popen.terminate()
    proc.popen.wait(timeout=timeout)
    return time.perf_counter() - t


def one_round(stack: Stack, data: Path, model_args: list[str], idle_s: float) -> dict[str, float]:
    t = time.perf_counter()
    server, address = stack.start_server(data, timeout=300, extra=model_args)
    serving = time.perf_counter() - t
    worker = stack.start_worker(address, [*model_args, "--batch-size", "16"])
    try:
        wait_for(lambda: "ready" in worker.output(), 300, "worker", worker.popen)
        ready = time.perf_counter() - t - serving
        time.sleep(idle_s)  # idle, consuming (in its blocking read of the queue): what a deployment stops
        return {"server start s": serving, "worker start s": ready,
                "worker stop s": stopped_in(worker), "server stop s": stopped_in(server)}
    finally:
        worker.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--checkout", action="append", default=[],
                        help="NAME=PATH of another checkout to compare, round by round")
    parser.add_argument("--name", default="stop", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    compared = checkouts(args.checkout, ROOT)
    model_args = ["--pretrained", args.pretrained]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp:
        redis, url = start_redis(Path(tmp) / "logs")
        try:
            for round_ in range(args.rounds):
                for name, path in compared:
                    stack = Stack(model=args.model, redis_url=url, log_dir=Path(tmp) / "logs", prefix=f"stop-{round_}")
                    if path != ROOT:  # that checkout's programs (and the core and client they import)
                        stack.extra_env = checkout_env(path, ("server", "encoder_worker", "core", "client"))
                    # idle 1 s plus a fraction that differs between rounds (the same for each checkout),
                    # so that SIGTERM lands at different points of the worker's 1 s blocking read
                    idle = 1.0 + (round_ * 0.37) % 1.0
                    rows.append({"code": name, "round": round_, "idle s": idle,
                                 **one_round(stack, Path(tmp) / f"data-{name}-{round_}", model_args, idle)})
                    print(rows[-1], flush=True)
        finally:
            redis.stop()
    pause = json.loads(subprocess.run([sys.executable, "-c", PAUSE, args.model, args.pretrained], capture_output=True,
                                      text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT, timeout=300,
                                      check=True).stdout.splitlines()[-1])
    print(f"\n== SIGTERM to exit, {args.model} ({os.cpu_count()} cores) ==")
    table(rows, ["code", "round", "idle s", "server start s", "worker start s", "worker stop s", "server stop s"])
    columns = ["server start s", "worker start s", "server stop s", "worker stop s"]
    medians = {name: {c: statistics.median(r[c] for r in rows if r["code"] == name) for c in columns}
               for name, _ in compared}
    print("\nmedians:")
    table([{"code": name, **m} for name, m in medians.items()], ["code", *columns])
    worst = {name: {c: max(r[c] for r in rows if r["code"] == name) for c in columns} for name, _ in compared}
    print("\nslowest round:")
    table([{"code": name, **m} for name, m in worst.items()], ["code", *columns])
    print(f"\n== one full gc.collect() in a loaded server process: {pause['objects']} start-up objects ==")
    print(f"not frozen {pause['collect_ms']:.1f} ms, frozen {pause['collect_frozen_ms']:.2f} ms")
    save(args.name, {"args": vars(args), "rows": rows, "medians": medians, "slowest": worst, "gc_pause": pause})


if __name__ == "__main__":
    main()
