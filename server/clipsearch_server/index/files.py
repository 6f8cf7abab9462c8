"""Crash-safe file replacement: write to a temp file, fsync it, rename over the target, fsync the folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["replace_durably", "write_text_durably"]


def replace_durably(tmp: Path, path: Path) -> None:
    """Makes the finished file `tmp` durable and atomically puts it at `path`."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_durably(path: Path, text: str) -> None:
    """Atomically replaces `path` with `text`: readers see the old or the new content, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    replace_durably(tmp, path)
