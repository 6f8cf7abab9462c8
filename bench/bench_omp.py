"""OpenMP's wait policy: the same ViT-B-32 forward pass and text query in fresh processes, alternating
OMP_WAIT_POLICY=PASSIVE (what clipsearch processes default to) and the OpenMP default (spin, then sleep).

    python bench/bench_omp.py [--model ViT-B-32] [--rounds 2]

Each measurement is a child process, because the policy is read once, when torch loads OpenMP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
import numpy as np
import clipsearch_core
from clipsearch_core.model import ModelSpec, load_encoder
enc = load_encoder(ModelSpec(sys.argv[1], "none", "cpu"))
x = [np.full((enc.image_size, enc.image_size, 3), i, np.uint8) for i in range(32)]
enc.encode_images(x[:4])
t, c = time.perf_counter(), time.process_time()
enc.encode_images(x)
wall, cpu = time.perf_counter() - t, time.process_time() - c
lat = []
for i in range(20):
    s = time.perf_counter(); enc.encode_text([f"a photo of a dog number {i}"]); lat.append(time.perf_counter() - s)
print(json.dumps({"img/s": 32 / wall, "cpu ms/img": cpu * 1000 / 32, "text p50 ms": float(np.median(lat)) * 1000}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="omp")
    args = parser.parse_args()
    from bench.common import save, table

    rows = []
    for r in range(args.rounds):
        for policy in ("PASSIVE", ""):  # "": unset for OpenMP (an empty value is ignored)
            env = {**os.environ, "OMP_WAIT_POLICY": policy}
            out = subprocess.run([sys.executable, "-c", CHILD, args.model], env=env, capture_output=True, text=True,
                                 timeout=600, check=True).stdout.strip().splitlines()[-1]
            rows.append({"round": r, "policy": policy or "default (spin)", **json.loads(out)})
            print(rows[-1], flush=True)
            time.sleep(1)
    table(rows, ["round", "policy", "img/s", "cpu ms/img", "text p50 ms"])
    save(args.name, {"model": args.model, "rows": rows})


if __name__ == "__main__":
    main()
