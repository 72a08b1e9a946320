"""Version 1 of the federation protocol: federation_pb2 (messages) and federation_pb2_grpc (service)."""
