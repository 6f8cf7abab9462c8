"""Shared helpers for the benchmark scripts: machine description, result files, percentiles."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(os.environ.get("CLIPSEARCH_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu or None, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def split_env(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Command-line words -> (arguments, environment): a word NAME=value with NAME in upper case is an
    environment variable."""
    def is_env(word: str) -> bool:
        return "=" in word and word.split("=", 1)[0].isupper()

    return [w for w in words if not is_env(w)], dict(w.split("=", 1) for w in words if is_env(w))


def checkouts(specs: list[str], root: Path) -> list[tuple[str, Path]]:
    """("this", root) and each `--checkout NAME=PATH` given, as (name, resolved path): the code to compare."""
    return [("this", root)] + [(name, Path(path).resolve()) for name, _, path in (s.partition("=") for s in specs)]


def checkout_env(checkout: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """The environment that makes a process import `packages` (folders such as "server", "core") from
    `checkout` instead of the installed ones: its folders first on PYTHONPATH."""
    return {"PYTHONPATH": os.pathsep.join(str(checkout / d) for d in packages)}


def scrape(port: int) -> dict[str, float]:
    """The samples of a Prometheus /metrics page: `name` or `name{label="value",...}` -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))}


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=float))
    print(f"wrote {path}")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
