"""`python -m clipsearch_server` (also `clipsearch server`): runs the search server until SIGTERM/SIGINT."""

from __future__ import annotations

import sys
from typing import Sequence

from . import program
from .app import serve
from .config import ServerConfig


def main(argv: Sequence[str] | None = None) -> int:
    return program.main("server", argv, "clipsearch server", "Run the clipsearch search server.",
                        lambda args: serve(ServerConfig.from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
