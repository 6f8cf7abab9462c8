"""Logging set-up shared by the server and the worker: plain text or one JSON object per line."""

from __future__ import annotations

import json
import logging

__all__ = ["setup_logging"]


class _JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _not_open_clip_chatter(record: logging.LogRecord) -> bool:
    """open_clip logs every loading step at INFO on the root logger; keep its warnings, drop the rest."""
    return record.levelno >= logging.WARNING or "open_clip" not in record.pathname


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configures the root logger for a server or worker process."""
    handler = logging.StreamHandler()
    handler.addFilter(_not_open_clip_chatter)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
