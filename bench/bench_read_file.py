"""Reading an image file by path under the allowed roots, as a worker's decode threads do for each job
submitted by path: `clipsearch_core.images.read_uri` against the way it read files before (resolve
the path with `Path.resolve`, a Python walk of its components, then stat and read), in one run,
interleaved rounds. With several threads the figure that matters is images/s: Python work holds the
GIL that the threads feeding the model need.

    python bench/bench_read_file.py [--files 2000] [--threads 1,8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import save, table  # noqa: E402
from clipsearch_core.images import LoadLimits, read_uri  # noqa: E402


def resolve_first(uri: str, limits: LoadLimits) -> bytes:
    """The previous read path (commit 47ee842 and before), for comparison."""
    real = Path(uri).resolve()
    if not any(real.is_relative_to(root.resolve()) for root in limits.allowed_roots):
        raise ValueError("outside")
    if real.stat().st_size > limits.max_bytes:
        raise ValueError("too big")
    return real.read_bytes()


def measure(read, files: list[str], limits: LoadLimits, threads: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(len(data) for data in pool.map(lambda f: read(f, limits), files))
    wall = time.perf_counter() - wall
    assert total == len(files) * Path(files[0]).stat().st_size
    return {"img/s": len(files) / wall, "cpu us/img": (time.process_time() - cpu) * 1e6 / len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=177, help="file size (the 1024x768 photos of bench_feed)")
    parser.add_argument("--threads", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "collection" / "2026" / "11" / "camera"  # a path of a few components
        folder.mkdir(parents=True)
        payload = bytes(range(256)) * (args.kb * 4)
        files = []
        for i in range(args.files):
            (folder / f"photo-{i:05d}.jpg").write_bytes(payload)
            files.append(str(folder / f"photo-{i:05d}.jpg"))
        limits = LoadLimits(allowed_roots=(Path(tmp) / "collection",))
        rows = []
        for threads in map(int, args.threads.split(",")):
            for rnd in range(args.rounds):
                for name, read in (("resolve first (before)", resolve_first),
                                   ("read_uri (open, then check)", read_uri)):
                    rows.append({"read": name, "threads": threads, "round": rnd,
                                 **measure(read, files, limits, threads)})
                    print(rows[-1], flush=True)
    print(f"\n== reading {args.files} files of {args.kb} KB by path under an allowed root ==")
    table(rows, ["read", "threads", "round", "img/s", "cpu us/img"])
    save("read-file", {"files": args.files, "kb": args.kb, "rows": rows})


if __name__ == "__main__":
    main()
