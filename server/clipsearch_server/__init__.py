"""clipsearch search server: owns the image store and FAISS HNSW index and serves the gRPC API."""

from .app import RunningServer, create_server, serve
from .config import DEFAULT_PORT, ServerConfig

__all__ = ["DEFAULT_PORT", "RunningServer", "ServerConfig", "create_server", "serve"]
