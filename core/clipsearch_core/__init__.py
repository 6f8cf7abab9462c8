"""clipsearch core: what the search server and the encoder workers share, and nothing else.

- `settings`: every server/worker option, declared once (flag, environment variable, default, help).
- `errors`: the domain exception tree (each process maps it to its own outcome at its edge).
- `model`: the OpenCLIP model (the only module that imports torch or open_clip).
- `images`: reading image bytes (files under allowed roots, safe URLs) and decoding them.
- `jobqueue`: the Redis queue protocol (every key name and Lua script).
- `logs`, `up`: process plumbing (`clipsearch up` starts the children by module name).

Importing this package imports none of its modules. It does one thing first: unless the environment
says otherwise, OpenMP threads (torch's and FAISS's, each with its own runtime) sleep when they run
out of work instead of spinning for it (`OMP_WAIT_POLICY=PASSIVE`). Spinning threads hold the cores
that the other runtime, the decode threads, the event loop and the other processes of the stack
need; measured on 2 busy cores (docs/BENCHMARKS.md, section 1): a ViT-B-32 forward pass used 108-112 ms
of CPU per image passive against 148-156 spinning, one text query took 85 ms against 227-417. It must be set before
torch or FAISS is loaded, which is why it lives here: every clipsearch process imports this package
before either.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
