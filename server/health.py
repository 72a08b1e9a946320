"""The standard grpc.health.v1 service, for container and load-balancer health checks.

It is served on the federation port (where, under mutual TLS, a checker needs a certificate like
any caller) and, with ``--health-address``, on a separate plaintext port that answers nothing but
health checks, so a container's health probe needs no key. ``fed-health HOST:PORT`` is that probe.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from medfed.common.cli import Parser

SERVICE = "medfed.proto.v1.Federation"


def make_health() -> health.HealthServicer:
    servicer = health.HealthServicer()
    for name in ("", SERVICE):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def health_only_server(address: str, servicer: health.HealthServicer) -> tuple[grpc.Server, int]:
    """A plaintext server with nothing but the health service; returns it (not started) and its port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return server, server.add_insecure_port(address)


def main(argv: Sequence[str] | None = None) -> int:
    """fed-health: exit 0 when the coordinator at HOST:PORT reports SERVING, 1 otherwise (one line why)."""
    parser = Parser(
        prog="fed-health",
        description="Check a coordinator's health over its plaintext --health-address (grpc.health.v1).",
        epilog="examples:\n  fed-health 127.0.0.1:8081\n  HEALTHCHECK CMD fed-health 127.0.0.1:8081  (Dockerfile)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", help="HOST:PORT of fed-server's --health-address")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"fed-health: {args.address}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
