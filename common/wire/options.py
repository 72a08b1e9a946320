"""gRPC channel and server options shared by both sides (plain tuples: no grpc import needed here).

Models stream in 1 MiB chunks, so both sides keep gRPC's default 4 MiB message limit. Keepalive pings
keep idle connections (a hospital training for a long time) from being dropped by middleboxes; the
server accepts pings as often as the client sends them, so neither side ever sees "too many pings".

Flow-control windows follow each connection's bandwidth-delay product (gRPC's BDP probing, on in both
directions), so a hospital 50 or 200 ms away streams at its link's rate. That costs the coordinator
memory only for the uploads it admits (server/intake.py): a hospital waiting for a receive slot has
sent nothing but its update's header. (It used to be a fixed 256 KiB receive window per stream, which
bounded what waiting uploads could pile up, and capped an upload at about 5 MB/s over a 50 ms round trip.)
Both sides accept HTTP/2 frames of up to 1 MiB, a whole chunk, instead of 16 KiB: with windows grown
by BDP probing, 16 KiB frames made a ResNet-18 round with one hospital on loopback take 0.54 s instead
of 0.30 (bench/many_hospitals.py).
"""

from __future__ import annotations

MAX_FRAME = 1 << 20
"""largest HTTP/2 frame either side accepts: a whole chunk of a model"""
CLIENT_KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 20_000

Options = list[tuple[str, int | str]]


def server_options() -> Options:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.http2.bdp_probe", 1),
        ("grpc.http2.max_frame_size", MAX_FRAME),
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
        ("grpc.http2.max_frame_size", MAX_FRAME),
    ]
