"""`python -m clipsearch_server` (also `clipsearch server`): runs the search server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys
from typing import Sequence

from clipsearch_core import settings
from clipsearch_core.errors import ServiceError
from clipsearch_core.logs import setup_logging

from .app import serve
from .config import ServerConfig


def main(argv: Sequence[str] | None = None) -> int:
    args = settings.parse("server", argv, "clipsearch server", "Run the clipsearch search server.")
    setup_logging(args.log_level, args.log_format)
    try:
        asyncio.run(serve(ServerConfig.from_args(args)))
    except (ServiceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
