"""`python -m clipsearch_server` (also `clipsearch server`): runs the search server until SIGTERM/SIGINT."""

from __future__ import annotations

import sys
from typing import Sequence

from clipsearch_core import heap

heap.hold()  # no garbage collection while the imports below and the model load (clipsearch_core.heap)

from . import program  # noqa: E402
from .app import serve  # noqa: E402
from .config import ServerConfig  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    return program.main("server", argv, "clipsearch server", "Run the clipsearch search server.",
                        lambda args: serve(ServerConfig.from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
