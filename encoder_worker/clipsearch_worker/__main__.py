"""`python -m clipsearch_worker` (also `clipsearch worker`): runs one encoder worker until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Sequence

from clipsearch_core import heap

if __name__ == "__main__":  # a program: no garbage collection during the imports (clipsearch_core.heap)
    heap.hold()

from clipsearch_core import settings  # noqa: E402
from clipsearch_core.logs import setup_logging  # noqa: E402
from clipsearch_core.model import load_encoder  # noqa: E402

from .worker import Worker, WorkerConfig, WorkerFatal  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    heap.freeze()  # imported; before any thread or connection (the model's objects are frozen once warm)
    heap.return_large_blocks()  # a decoded image's memory goes back to the system when freed
    args = settings.parse("worker", argv, "clipsearch worker", "Run a clipsearch encoder worker.")
    setup_logging(args.log_level, args.log_format)
    config = WorkerConfig.from_args(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    encoder = load_encoder(config.model, args.threads or None)
    encoder.own_decode_stream = config.decode_stream  # for the warm-up, before the Worker (which sets it too)
    # a full batch through the path jobs take, before taking any (on a GPU: kernels, memory, decoder)
    warm = encoder.warm_up(images=config.batch_size, jpegs=config.device_decode,
                           thumbnail_side=config.thumbnail.size)
    worker = Worker(config, encoder)
    frozen = heap.freeze()  # loaded and warm: the model's objects too
    print(f"clipsearch worker {config.consumer} ready (warmed up in {warm:.2f} s; {frozen} start-up objects frozen)",
          flush=True)
    try:
        worker.run(stop)
    except WorkerFatal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        worker.close()
        print(f"clipsearch worker {config.consumer} stopped after {worker.processed} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
