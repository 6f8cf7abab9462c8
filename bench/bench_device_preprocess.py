"""The device-decode path's own cost around the decoder: `ClipEncoder.decode_jpegs_and_thumbnails` and
the stacking of its results into the model's input batch (the forward pass left out), on batches of JPEGs,
for the code in this checkout and for others given with `--checkout NAME=PATH`, alternated round by
round in one invocation (each round a fresh process whose
PYTHONPATH puts that checkout's core first). Reports per batch: torch operator calls (from the torch
profiler; on a GPU each is at least one kernel launch from the worker's main thread) and device-to-host
copies, and per image: CPU ms of the whole step and of the decoder alone.

    python bench/bench_device_preprocess.py [--checkout before=/path/to/old/checkout] [--device cuda]
        [--model ViT-B-32 --pretrained none] [--images 256] [--batch 256] [--thumbnail 256] [--rounds 3]
        [--group]  (on the CPU: resize same-sized images together, as a GPU does, to count its operator calls)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import checkouts, save, table  # noqa: E402


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One round in this process: the model code is whatever `clipsearch_core` resolves to."""
    import torch

    import clipsearch_core  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads
    from clipsearch_core import model as model_module
    from clipsearch_core.model import ModelSpec, load_encoder
    from clipsearch_devkit.photos import photo_jpeg

    encoder = load_encoder(ModelSpec(args.model, args.pretrained, args.device), threads=args.threads)
    if args.group and hasattr(encoder, "group_resizes"):
        encoder.group_resizes = True  # as on a GPU (on the CPU it resizes one by one)
    unique = [photo_jpeg(seed, args.width, args.height) for seed in range(min(args.images, 32))]
    photos = [unique[i % len(unique)] for i in range(args.images)]
    batches = [photos[i:i + args.batch] for i in range(0, len(photos), args.batch)]
    cuda = encoder.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step(datas: list[bytes]) -> Any:
        """Bytes to the model's normalized input batch on the device (the forward pass is left out: the
        same code in every checkout)."""
        inputs, _ = encoder.decode_jpegs_and_thumbnails(datas, thumbnail_side=args.thumbnail)
        if hasattr(encoder, "_input_batch"):
            return encoder._input_batch(inputs)  # scales and normalizes the uint8 crops
        return torch.stack(inputs)  # before: normalized per image in decode_jpegs

    step(batches[0])  # warm-up: kernels, allocator, decoder
    sync()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(batches[0])
        sync()
    top = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]  # as called
    ops = len(top)
    copies = sum(1 for e in top if e.name in ("aten::to", "aten::_to_copy", "aten::copy_"))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for datas in batches:
        step(datas)
    sync()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in photos]
    dec0 = time.process_time()
    for i in range(0, len(raw), args.batch):
        model_module._decode_on_device(raw[i:i + args.batch], "auto", encoder.device) \
            if hasattr(model_module, "_decode_on_device") else _old_decode(raw[i:i + args.batch], encoder.device)
    sync()
    decode = time.process_time() - dec0
    n = len(photos)
    return {"ops_per_batch": ops, "copies_per_batch": copies, "images_per_batch": len(batches[0]),
            "cpu_ms_per_image": 1000 * cpu / n, "decoder_cpu_ms_per_image": 1000 * decode / n,
            "around_decoder_cpu_ms_per_image": 1000 * (cpu - decode) / n, "img_per_s": n / wall,
            "device": encoder.device}


def _old_decode(raw: list[Any], device: str) -> Any:
    """The decoder call alone, for checkouts from before `_decode_on_device` existed (TorchCodec)."""
    from torchcodec.decoders import decode_jpeg

    return decode_jpeg(raw, mode="RGB", device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", default=[], help="NAME=PATH of another checkout to compare")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--thumbnail", type=int, default=256, help="thumbnail side scaled on the device (0: off)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group", action="store_true", help="resize same-sized images together on the CPU too")
    parser.add_argument("--name", default="device-preprocess")
    parser.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_round:
        print(json.dumps(measure(args)))
        return
    compared = checkouts(args.checkout, ROOT)
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for name, path in compared:
            paths = [path / "core", ROOT / "client", ROOT]  # that checkout's model code; this one's photos
            inherited = os.environ.get("PYTHONPATH", "")  # e.g. the carried wheels on a lent GPU machine
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), *([inherited] if inherited else [])])}
            out = subprocess.run([sys.executable, __file__, *_own_args(args), "--one-round"], env=env,
                                 capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                raise SystemExit(f"{name} round {round_} failed:\n{out.stderr[-3000:]}")
            runs.append({"checkout": name, "round": round_, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(f"round {round_} {name}: {runs[-1]}", flush=True)
    columns = ["checkout", "round", "torch ops/batch", "copies/batch", "CPU ms/img", "decoder ms/img",
               "around ms/img", "img/s"]
    keys = ["checkout", "round", "ops_per_batch", "copies_per_batch", "cpu_ms_per_image", "decoder_cpu_ms_per_image",
            "around_decoder_cpu_ms_per_image", "img_per_s"]
    print(f"\n== device decode + preprocess into the input batch, {args.model}, {args.width}x{args.height}, "
          f"batch {args.batch}, thumbnail {args.thumbnail}, device {args.device}"
          f"{', grouped as on a GPU' if args.group else ''} ==")
    table([{c: r[k] for c, k in zip(columns, keys)} for r in runs], columns)
    save(args.name, {"args": vars(args), "runs": runs})


def _own_args(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--pretrained", args.pretrained, "--device", args.device, "--images",
            str(args.images), "--batch", str(args.batch), "--width", str(args.width), "--height", str(args.height),
            "--thumbnail", str(args.thumbnail), "--threads", str(args.threads)] + (["--group"] if args.group else [])


if __name__ == "__main__":
    main()
