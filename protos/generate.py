"""Regenerates the Python gRPC code in client/clipsearch/v1 from protos/clipsearch/v1/*.proto.

Run: python protos/generate.py            (writes the files)
     python protos/generate.py --out DIR  (writes into DIR instead; the drift test uses this)
The output depends only on the .proto files and the pinned grpcio-tools version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "client"


def proto_files() -> list[Path]:
    """All .proto files of the API, sorted for a stable order."""
    return sorted((PROTO_ROOT / "clipsearch" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Runs protoc (from grpcio-tools) and returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    rel = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    pkg = out / "clipsearch" / "v1"
    init = pkg / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC/protobuf code for the clipsearch.v1 API '
                        '(do not edit; see protos/generate.py)."""\n')
    return sorted(p for p in pkg.iterdir() if p.name.endswith((".py", ".pyi")) and p.name != "__init__.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
