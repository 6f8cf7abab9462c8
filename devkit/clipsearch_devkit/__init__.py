"""clipsearch's developer kit: what the tests, the benchmarks (`bench/`) and the demo (`scripts/demo.sh`) share.

- `procs`: start and stop the real processes (Redis, search servers, encoder workers, the router), bounded
  in time; `forkserver`: the fork server `procs.spawn` forks the test session's servers and workers from.
- `photos`: photo-like JPEGs; `data`: synthetic inputs and waiting helpers for a running stack.
- `pg`: a throwaway PostgreSQL cluster.
- `tinyclip`: the tiny offline OpenCLIP model (its trainer, its synthetic pictures, its evaluation, and the
  trained files in `tinyclip/model/`).

It is a development tool, never a runtime dependency: nothing in client/, core/, server/ or encoder_worker/
imports it, and it is not in the `clipsearch` wheel. It is its own distribution (`devkit/pyproject.toml`),
installed editable by `scripts/setup.sh` (`pip install -e ./devkit`), and it works from a checkout only:
`REPO` is the checkout that holds it, the working directory of every process it starts.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
