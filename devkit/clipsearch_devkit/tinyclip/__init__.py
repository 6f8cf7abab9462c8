"""Tiny offline OpenCLIP model trained on synthetic coloured shapes, for the tests, the benchmarks and the demo."""

from __future__ import annotations

from pathlib import Path

# The trained model in open_clip's local-dir layout, committed (`python -m clipsearch_devkit.tinyclip.train`
# rebuilds it; the tests' `tiny_model` fixture does when it is missing)
MODEL_DIR = Path(__file__).resolve().parent / "model"
MODEL_SPEC = f"local-dir:{MODEL_DIR}"
