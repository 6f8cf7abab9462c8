"""clipsearch search server: owns the image store and FAISS HNSW index and serves the gRPC API.

The names below are imported on first use, so that the router (`clipsearch_server.router`), which
neither searches nor encodes, starts without loading torch or FAISS.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_PORT", "RunningServer", "ServerConfig", "create_server", "serve"]

_HOME = {"RunningServer": "app", "create_server": "app", "serve": "app", "DEFAULT_PORT": "config",
         "ServerConfig": "config"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
