"""Test-wide settings."""

import os

# Tests provoke TLS handshake failures on purpose; gRPC's C core would log each one to stderr.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
