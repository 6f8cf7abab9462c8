"""Runs a command with a folder on a small file system of its own, to test a full disk for real.

    python tests/smalldisk.py FOLDER SIZE_KB FILLER_KB CONTROL_DIR -- COMMAND...

Meant to run under `unshare --user --map-root-user --mount` (works without root where user namespaces
are allowed): mounts a tmpfs of SIZE_KB at FOLDER, visible only to this process and its children, writes
a FILLER_KB file into it, and runs COMMAND. When CONTROL_DIR/free appears, the filler is deleted (space
comes back) and CONTROL_DIR/freed is written. SIGTERM and SIGINT are passed to COMMAND; exits with its code.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    folder, size_kb, filler_kb, control = Path(argv[0]), int(argv[1]), int(argv[2]), Path(argv[3])
    assert argv[4] == "--", "usage: FOLDER SIZE_KB FILLER_KB CONTROL_DIR -- COMMAND..."
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "smalldisk", str(folder)], check=True)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * (filler_kb * 1024))
    child = subprocess.Popen(argv[5:])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _frame: child.send_signal(s))
    (control / "mounted").write_text(str(child.pid))
    while child.poll() is None:
        if (control / "free").exists() and filler.exists():
            filler.unlink()
            (control / "freed").write_text("")
        time.sleep(0.1)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
