"""clipsearch core: what the search server, the router and the encoder workers share, and nothing else.

- `settings`: every server/worker/router option, declared once (flag, environment variable, default, help).
- `errors`: the domain exception tree (each process maps it to its own outcome at its edge).
- `model`: the OpenCLIP model (the only module that imports torch or open_clip); server and worker.
- `images`, `fetch`: reading image bytes (files under allowed roots, safe URLs) and decoding them; server
  and worker.
- `jobqueue`: the Redis queue protocol, a package (`JobQueue`: every key name, Lua script, job format,
  the worker registry and status); the server submits and reports, the worker takes and acknowledges.
- `pages`, `shards`: page tokens and the shard of an image id; the server and the router (which does not
  import the server package, so what they share lives here).
- `heap`, `logs`: process plumbing of every clipsearch program.
- `up`: `clipsearch up`, the one program here (it starts Redis, a server and a worker as processes by
  module name and imports only `settings`). It names both programs, so it can live in neither (the
  server never mentions the worker), and the client never imports this package.

Importing this package imports none of its modules. It does one thing first: unless the environment
says otherwise, OpenMP threads (torch's and FAISS's, each with its own runtime) sleep when they run
out of work instead of spinning for it (`OMP_WAIT_POLICY=PASSIVE`). Spinning threads hold the cores
that the other runtime, the decode threads, the event loop and the other processes of the stack
need; measured on 2 busy cores (bench/bench_omp.py): a ViT-B-32 forward pass used 108-112 ms
of CPU per image passive against 148-156 spinning, one text query took 85 ms against 227-417. It must be set before
torch or FAISS is loaded, which is why it lives here: every clipsearch process imports this package
before either.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
