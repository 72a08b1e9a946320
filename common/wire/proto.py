"""The generated messages and service, imported here and nowhere else in the tree, so that the rest of
medfed depends on the wire's functions rather than on generated code."""

from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
