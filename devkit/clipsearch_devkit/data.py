"""Synthetic inputs and waiting helpers for a running stack, shared by the tests and the benchmarks."""

from __future__ import annotations

import io
import time

from clipsearch import Client, ImageInput, Progress
from clipsearch_devkit.tinyclip.synthetic import iter_balanced


def png_bytes(image) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def synthetic_inputs(per_class: int, seed: int, size: int = 64) -> list[ImageInput]:
    """Inline PNG submissions with ids img-0..img-N and colour/shape metadata."""
    return [
        ImageInput(image=png_bytes(image), uri=f"/synthetic/{color}-{shape}-{n}.png", id=f"img-{n}",
                   metadata={"color": color, "shape": shape})
        for n, (image, color, shape) in enumerate(iter_balanced(per_class, seed=seed, size=size))
    ]


def submit_all(client: Client, inputs: list[ImageInput], chunk: int = 100) -> str:
    batch = ""
    for start in range(0, len(inputs), chunk):
        batch = client.submit(inputs[start : start + chunk], batch).batch_id
    return batch


def wait_until(client: Client, batch: str, timeout: float, predicate=lambda p: p.done) -> Progress:  # type: ignore[no-untyped-def]
    """Polls the batch's progress until `predicate` holds; fails the test with the last progress on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            progress = client.progress(batch, timeout=5)
            if predicate(progress):
                return progress
        except Exception as exc:  # noqa: BLE001 - the server may be restarting
            progress = exc  # type: ignore[assignment]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last progress: {progress}")
        time.sleep(0.3)


def resolver_answers() -> bool:
    """True when this machine's resolver says that a name does not exist (NXDOMAIN), as it does with DNS;
    without one (no network) every name is a temporary failure instead."""
    import socket

    try:
        socket.getaddrinfo("no-such-host.invalid", 80)
    except socket.gaierror as exc:
        return exc.errno == socket.EAI_NONAME
    return False
