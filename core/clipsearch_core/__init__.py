"""clipsearch core: what the search server and the encoder workers share, and nothing else.

- `settings`: every server/worker option, declared once (flag, environment variable, default, help).
- `errors`: the domain exception tree (each process maps it to its own outcome at its edge).
- `model`: the OpenCLIP model (the only module that imports torch or open_clip).
- `images`: reading image bytes (files under allowed roots, safe URLs) and decoding them.
- `jobqueue`: the Redis queue protocol (every key name and Lua script).
- `logs`, `up`: process plumbing (`clipsearch up` starts the children by module name).

Importing this package imports none of its modules.
"""
