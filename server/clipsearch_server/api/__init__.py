"""The gRPC edge: servicers, request conversion and validation, the boundary (error table, request ids,
metrics), auth (bearer tokens), and how a server or router listens. Protobuf types stop here (and in
`search.filters`, which evaluates the protobuf Filter).
"""
