"""Generated gRPC/protobuf code for the federation protocol (see protos/generate.py)."""
