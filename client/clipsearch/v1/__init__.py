"""Generated gRPC/protobuf code for the clipsearch.v1 API (do not edit; see protos/generate.py)."""
