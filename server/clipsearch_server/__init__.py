"""clipsearch search server: owns the image store and the FAISS index and serves the gRPC API.

Subpackages, in the order a request travels (each imports only those after it; tests/test_packaging.py):
`api` (servicers, request conversion, validation, the error table, auth, metrics, listening),
`ingest` (submissions queued as jobs), `search` (encoding with micro-batching, the query planner, filters),
`replication` (a server following a shared PostgreSQL store), `collection` (one collection: write
ordering, seal, snapshot, compaction, catch-up), then `index` (the vector-index seam, its kinds, segments,
snapshots: the only faiss import) and `storage` (SQLite and PostgreSQL stores, typed fields).
`app` wires them into a running server (`create_server`, `serve`); `config` is its configuration.
Importing this package imports none of them, so the router (`clipsearch_router`) can use `api`'s edge
modules without loading torch or faiss.
"""
