"""`python -m clipsearch_server` (also `clipsearch server`): runs the search server until SIGTERM/SIGINT."""

from __future__ import annotations

import sys
from typing import Sequence

from clipsearch_core import heap

if __name__ == "__main__":  # a program: no garbage collection during the imports (clipsearch_core.heap)
    heap.hold()

from .api import program  # noqa: E402
from .app import serve  # noqa: E402
from .config import ServerConfig  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    heap.freeze()  # imported; before the port opens (the model's objects are frozen once it is loaded)
    heap.return_large_blocks()  # a decoded image's memory goes back to the system when freed
    return program.main("server", argv, "clipsearch server", "Run the clipsearch search server.",
                        lambda args: serve(ServerConfig.from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
