"""gRPC channel and server options shared by both sides (plain tuples: no grpc import needed here).

Models stream in 1 MiB chunks, so both sides keep gRPC's default 4 MiB message limit. Keepalive pings
keep idle connections (a hospital training for a long time) from being dropped by middleboxes; the
server accepts pings as often as the client sends them, so neither side ever sees "too many pings".
"""

from __future__ import annotations

RECEIVE_WINDOW = 256 << 10
"""The coordinator's fixed HTTP/2 receive window per stream. gRPC's default lets bandwidth probing grow
it to many MB per stream, and every upload waiting for a receive slot then piles that much into the
coordinator's memory. 256 KiB keeps that at N x 256 KiB and still carries about 12 MB/s per upload
over a 20 ms round trip (more than most hospital uplinks)."""
CLIENT_KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 20_000

Options = list[tuple[str, int | str]]


def server_options() -> Options:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", CLIENT_KEEPALIVE_MS // 2),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def channel_options() -> Options:
    return [
        ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
    ]
