"""clipsearch router: one gRPC address in front of several search servers (shards, replicas).

`app` holds the routing servicers and the program (`python -m clipsearch_router`, `clipsearch router`);
`cluster` the router's view of the servers (shards, `ShardReplica`s, health, one call to a shard).
The router neither searches nor encodes: of the server package it imports only the edge modules of
`clipsearch_server.api` that import no torch, faiss or layer below the API (program, validation, boundary,
errors, metrics, security, tokens); a test checks it (tests/test_packaging.py).
"""
