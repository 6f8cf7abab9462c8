"""`python -m clipsearch_router` (also `clipsearch router`): runs the router until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
