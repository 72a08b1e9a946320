"""gRPC credentials for mutual TLS, built from the PEM files fed-certs writes.

The coordinator requires and verifies a client certificate from every hospital; each hospital
verifies the coordinator's certificate and host name against the federation's CA.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from medfed.common.errors import PkiError


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from None


def server_credentials(cert: Path, key: Path, ca: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))], root_certificates=_read(ca), require_client_auth=True
    )


def channel_credentials(cert: Path, key: Path, ca: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )
