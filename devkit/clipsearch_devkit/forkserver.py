"""A fork server for the test suite's Python processes: the heavy imports once, a fork per process.

Every server and worker the tests start used to spend about 6 s of CPU importing torch, torchvision,
open_clip, faiss and numpy before running a line of clipsearch; with ~100 starts that was most of the
suite's time on a 2-core machine. Like multiprocessing's "forkserver" start method with preloading, one
process here imports those libraries once (of clipsearch only the `clipsearch_core` package, which
imports none of its modules; no grpc: nothing that holds sockets), then forks a child per request. The
child takes the request's environment, working directory, argv and log file and runs the module
exactly as `python -m MODULE` does (`runpy._run_module_as_main`),
so the process under test is the real program; only the import of third-party code is shared. The
server imports the `clipsearch_core` package first, as the programs do (it sets OMP_WAIT_POLICY before
torch loads OpenMP), and each child imports it again in its own environment.

Protocol (a Unix socket): the test sends one JSON line {"module", "args", "env", "cwd", "log"}, and
reads back {"pid": N} and later {"returncode": RC} (Popen's convention: -SIG when a signal ended it)
on the same connection. `ForkedProcess` wraps that connection in the part of `subprocess.Popen` the
tests use. Environments that differ from the server's in a variable read when those libraries load
(LOAD_TIME_PREFIXES) are not forked: `clipsearch_devkit.procs.spawn` execs those, as it does every process
that is not `python -m` (Redis, the router's CLI, `clipsearch up`).
"""

from __future__ import annotations

import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clipsearch_devkit import REPO

# Variables the preloaded libraries read when they load: a child whose environment differs from the fork
# server's in one of these would not behave as an exec'd process would, so it is exec'd instead.
LOAD_TIME_PREFIXES = ("OMP_", "KMP_", "MKL_", "OPENBLAS", "GOTO", "CUDA", "NVIDIA", "TORCH", "PYTORCH", "ATEN_",
                      "FAISS_", "NPY_", "LD_", "PYTHON", "HF_", "HUGGINGFACE", "TRANSFORMERS", "XDG_", "MALLOC",
                      "LANG", "LC_", "TZ", "TMPDIR")
PRELOAD = ("numpy", "PIL.Image", "torch", "torchvision", "open_clip", "faiss")


def load_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(LOAD_TIME_PREFIXES)}


# ---- the server ------------------------------------------------------------------------------------

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


def _serve(path: str) -> dict[str, Any]:
    """Accept requests until told to stop; returns only in a forked child, with that child's request."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the path appears once connections are taken
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up byte is what matters
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    children: dict[int, socket.socket] = {}

    def fork(conn: socket.socket) -> dict[str, Any] | None:
        """Serves one request: the child's request in the child, None in the server."""
        try:
            with conn.makefile("rb") as reader:
                request = json.loads(reader.readline())
            # blocked across fork: a signal meant for the child must not reach the server's handlers
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            pid = os.fork()
        except (OSError, ValueError) as exc:  # a client that went away, a bad line, fork refused
            print(f"forkserver: request refused: {exc!r}", flush=True)
            conn.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            return None
        if pid == 0:  # the child: leave the server's loop with its request
            sel.close()
            listener.close()
            conn.close()
            for sock in children.values():
                sock.close()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            return request
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        children[pid] = conn
        _send(conn, {"pid": pid})
        return None

    parent, server = os.getppid(), os.getpid()
    try:
        while not stopping and os.getppid() == parent:  # ends with the test session, even a killed one
            for key, _ in sel.select(timeout=1.0):
                if key.data == "wake":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif key.data == "accept":
                    conn, _ = listener.accept()
                    conn.settimeout(10)
                    request = fork(conn)
                    if request is not None:
                        return request
            while children:  # reap whoever ended
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    _send(conn, {"returncode": os.waitstatus_to_exitcode(status)})
                    conn.close()
    finally:
        if os.getpid() == server:  # the session is over (or the server failed): nothing outlives it
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    sys.exit(0)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:  # the client went away; its child is reaped all the same
        pass


def _become(request: dict[str, Any]) -> None:
    """In a forked child: take on the request's process state and run its module as `python -m` does."""
    import runpy
    import types

    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # blocked across fork; now with a fresh process's handlers
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    del sys.modules["clipsearch_core"]  # imported again by the program: its environment settings land in this one
    if "numpy" in sys.modules:  # numpy's global generator was seeded once, in the server
        sys.modules["numpy"].random.seed()
    sys.argv = [request["module"], *request["args"]]
    sys.modules["__main__"] = types.ModuleType("__main__")  # a fresh namespace, as `python -m` starts with
    runpy._run_module_as_main(request["module"])  # type: ignore[attr-defined]


def main() -> None:
    path = sys.argv[1]
    import clipsearch_core  # noqa: F401 - first, as in the programs: it sets what OpenMP reads when torch loads it

    for name in PRELOAD:
        __import__(name)
    request = _serve(path)
    _become(request)


# ---- the client --------------------------------------------------------------------------------------

class ForkedProcess:
    """The part of `subprocess.Popen` the tests use, for a process the fork server started."""

    def __init__(self, conn: socket.socket, args: list[str]) -> None:
        self.args = args
        self._conn = conn
        self._buffer = b""
        self.returncode: int | None = None
        line = self._line(30.0)
        if line is None:
            raise RuntimeError("the fork server did not answer within 30 s")
        self.pid: int = json.loads(line)["pid"]

    def _line(self, timeout: float | None) -> bytes | None:
        """The server's next line, or None if none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return None
            chunk = self._conn.recv(4096)
            if not chunk:  # the fork server itself went away; the child may still run
                raise RuntimeError("the fork server went away (its log: forkserver.log beside its socket)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _read_status(self, timeout: float | None) -> None:
        if self.returncode is None:
            line = self._line(timeout)
            if line is not None:
                self.returncode = json.loads(line)["returncode"]
                self._conn.close()

    def poll(self) -> int | None:
        self._read_status(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read_status(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        try:
            ended = self.poll() is not None
        except RuntimeError:  # the fork server is gone (it killed its children as it went): signal anyway
            ended = False
        if not ended:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """A running fork server (started by `start`), and the way to fork from it."""

    def __init__(self, proc: subprocess.Popen, path: Path, env: dict[str, str]) -> None:
        self.proc = proc
        self.path = path
        self.load_env = load_time_env(env)

    @classmethod
    def start(cls, work_dir: Path, env: dict[str, str], timeout: float = 120) -> ForkServer:
        path = work_dir / "forkserver.sock"
        log = open(work_dir / "forkserver.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "clipsearch_devkit.forkserver", str(path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the fork server did not start: "
                                   + (work_dir / "forkserver.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        return cls(proc, path, env)

    def can_fork(self, env: dict[str, str]) -> bool:
        return self.proc.poll() is None and load_time_env(env) == self.load_env

    def fork(self, module: str, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> ForkedProcess:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(30)
        conn.connect(str(self.path))
        request = {"module": module, "args": args, "env": env, "cwd": str(cwd), "log": str(log)}
        conn.sendall(json.dumps(request).encode() + b"\n")
        return ForkedProcess(conn, [sys.executable, "-m", module, *args])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


if __name__ == "__main__":
    main()
