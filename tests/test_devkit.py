"""The developer kit (devkit/clipsearch_devkit) is what the tests, the benchmarks and the demo share: it stands
on its own (imports without the tests), nothing outside tests/ imports the test suite, and the shipped
packages never import the kit."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import clipsearch_devkit
from clipsearch_devkit import REPO

SHIPPED = ("client", "core", "server", "encoder_worker")  # the packages of the clipsearch wheel
MODULES = ("procs", "forkserver", "photos", "pg", "data", "tinyclip", "tinyclip.synthetic", "tinyclip.train",
           "tinyclip.evaluate")
# `import tests`, `from tests... import`, `python -m tests.x` and the moved paths, as a shell script writes them
SHELL_USE = re.compile(r"^\s*(from|import)\s+tests\b|-m\s+tests\.|\btests/(tinyclip|procs|photos|pg|forkserver)\b",
                       re.MULTILINE)


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, absolute, in full (`a.b` of `from a.b import c`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_nothing_outside_the_tests_imports_them() -> None:
    sources = [p for folder in ("bench", "devkit", "scripts", "protos", *SHIPPED)
               for p in (REPO / folder).rglob("*.py")]
    assert any(p.parts[-3:-1] == ("clipsearch_devkit", "tinyclip") for p in sources)  # the scan sees the kit
    broken = sorted(str(p.relative_to(REPO)) for p in sources if "tests" in _top(_imported(p)))
    assert not broken, f"these import the test suite (move what they need to clipsearch_devkit): {broken}"
    scripts = [*(REPO / "scripts").glob("*.sh"), REPO / ".ci" / "run"]
    assert REPO / "scripts" / "demo.sh" in scripts
    shell = sorted(f"{p.relative_to(REPO)}: {m.group(0).strip()}" for p in scripts if p.exists()
                   for m in SHELL_USE.finditer(p.read_text()))
    assert not shell, f"these scripts use the test suite: {shell}"


def test_the_shipped_packages_never_import_the_devkit() -> None:
    broken = sorted(str(p.relative_to(REPO)) for folder in SHIPPED for p in (REPO / folder).rglob("*.py")
                    if "clipsearch_devkit" in _top(_imported(p)))
    assert not broken, f"the devkit is a development tool, not a runtime dependency: {broken}"


def test_the_devkit_imports_without_the_tests(tmp_path: Path) -> None:
    """From a folder outside the checkout (so neither the repository nor tests/ is on sys.path), as the
    benchmarks and the demo import it; none of its modules pulls in `tests`."""
    code = ("import sys, clipsearch_devkit\n"
            + "".join(f"import clipsearch_devkit.{m}\n" for m in MODULES)
            + "assert not [m for m in sys.modules if m == 'tests' or m.startswith('tests.')], 'imported tests'\n"
            + "print(clipsearch_devkit.__file__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert Path(out.stdout.strip()) == Path(clipsearch_devkit.__file__)  # this checkout's kit, not another one


def test_the_tiny_model_lives_in_the_devkit() -> None:
    from clipsearch_devkit.tinyclip import MODEL_DIR, MODEL_SPEC

    assert MODEL_DIR.is_relative_to(REPO / "devkit") and MODEL_SPEC == f"local-dir:{MODEL_DIR}"
    assert (MODEL_DIR / "open_clip_config.json").is_file()


def test_the_tests_import_the_devkit_itself() -> None:
    """The kit is not re-exported from tests/ any more: tests import `clipsearch_devkit` like the rest."""
    tests = Path(__file__).resolve().parent
    for gone in ("procs.py", "photos.py", "pg.py", "data.py", "forkserver.py", "tinyclip"):
        assert not (tests / gone).exists(), gone
    for path in tests.glob("*.py"):
        for line in path.read_text().splitlines():
            assert not re.match(r"\s*(from|import) tests\.(procs|photos|pg|data|forkserver|tinyclip)\b", line), \
                f"{path.name}: {line}"
