"""A ping through the path Petals traffic takes: the round trip of libp2p's first exchange with a peer's address.

A libp2p listener (p2pd) answers a new connection's ``multistream-select`` header and protocol proposal right away,
before any cryptography, so the time from sending them to reading its answer to the proposal is one network round
trip to the real server, through whatever is in between (here: the delaying proxy in front of every host)::

    python -m bench.latency_probe 10.77.0.11 41011 --count 5     # prints the round trips in ms, as JSON
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

PROTOCOL = b"/multistream/1.0.0\n"
PROPOSAL = b"/noise\n"


def _frame(message: bytes) -> bytes:
    return bytes([len(message)]) + message  # a one-byte uvarint: every message here is under 128 bytes


def _read_frame(sock: socket.socket, buffer: bytearray) -> bytes:
    while not buffer or len(buffer) < 1 + buffer[0]:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("the peer closed the connection during multistream-select")
        buffer += data
    size = buffer[0]
    message = bytes(buffer[1:1 + size])
    del buffer[:1 + size]
    return message


def round_trip(host: str, port: int, timeout: float = 10.0) -> float:
    """Seconds from sending multistream-select's header and a proposal to reading the answer to the proposal."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        started = time.perf_counter()
        sock.sendall(_frame(PROTOCOL) + _frame(PROPOSAL))
        if _read_frame(sock, buffer) != PROTOCOL:
            raise ConnectionError(f"{host}:{port} does not speak multistream-select")
        _read_frame(sock, buffer)  # "/noise\n" (accepted) or "na\n": either way, one round trip
        return time.perf_counter() - started


def round_trips_ms(host: str, port: int, count: int = 5) -> list[float]:
    return [round(1000 * round_trip(host, port), 2) for _ in range(count)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(round_trips_ms(args.host, args.port, args.count)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
