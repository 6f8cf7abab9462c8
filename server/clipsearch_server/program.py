"""How the server and the router run as programs: options, logging, signals, and exit codes.

`main` parses a role's declared options (clipsearch_core.settings), sets up logging and runs the
program's `serve` coroutine; a start-up error (a ServiceError such as a refused configuration, or an
OSError such as a port in use) prints `error: ...` and exits 2, Ctrl-C exits 130. `stop_signals`
returns the event that SIGINT and SIGTERM set, which `serve` waits on before a graceful stop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Awaitable, Callable, Sequence

from clipsearch_core import settings
from clipsearch_core.errors import ServiceError
from clipsearch_core.logs import setup_logging

__all__ = ["main", "stop_signals"]


def main(role: str, argv: Sequence[str] | None, prog: str, description: str,
         serve: Callable[[argparse.Namespace], Awaitable[None]]) -> int:
    """Runs a program until it stops; returns its exit code."""
    args = settings.parse(role, argv, prog, description)
    setup_logging(args.log_level, args.log_format)
    try:
        asyncio.run(serve(args))  # type: ignore[arg-type]
    except (ServiceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def stop_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets (call it inside the running event loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
