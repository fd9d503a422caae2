"""A TCP proxy that delays every chunk by a one-way time, in both directions (a user-space ``netem delay``).

``DelayProxy`` listens on some addresses and forwards each to a target. Every chunk read from either side is written
to the other side at its arrival time plus ``delay`` seconds: chunks keep their order but do not queue behind each
other's delay (each is released at its own ``arrival + delay``, not at the previous release plus ``delay``), and an
end of stream (half-close) travels with the same delay. The delay may change on live connections; lowering it never
reorders a connection (no chunk is released before the one ahead of it). A connection through the proxy has a
round-trip time ``2 * delay`` longer than without it: set ``delay = RTT / 2``.

As a program (used by ``bench.latency`` inside network namespaces)::

    python -m bench.delay_proxy --route 10.77.0.11:41000=127.0.0.1:31000 [--route ...] --delay-ms 25

prints ``ready`` once listening, then answers commands on stdin, one per line: ``delay MS`` (``ok``), ``stats``
(one JSON line: connections and bytes per route and client address); it exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
from dataclasses import dataclass, field

CHUNK = 64 * 1024
QUEUED_CHUNKS = 256  # per direction: past this, stop reading (back-pressure, like a link's buffer)


@dataclass
class Route:
    listen: tuple[str, int]
    target: tuple[str, int]
    # per client address: [connections, bytes client->target, bytes target->client]
    traffic: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(lambda: [0, 0, 0]))


def parse_route(text: str) -> Route:
    """``"LISTEN_IP:PORT=TARGET_IP:PORT"``."""
    try:
        listen, target = text.split("=")
        (lh, lp), (th, tp) = (part.rsplit(":", 1) for part in (listen, target))
        return Route((lh, int(lp)), (th, int(tp)))
    except ValueError:
        raise ValueError(f"route {text!r} must look like LISTEN_IP:PORT=TARGET_IP:PORT") from None


class DelayProxy:
    def __init__(self, routes: list[Route], delay: float = 0.0):
        self.routes = routes
        self.delay = delay  # seconds, one way; may change at any time
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> DelayProxy:
        """Listen on every route (once; ``async with`` starts a proxy that is not started yet)."""
        if self._servers:
            return self
        for route in self.routes:
            server = await asyncio.start_server(lambda r, w, route=route: self._accept(route, r, w), *route.listen)
            if route.listen[1] == 0:
                route.listen = (route.listen[0], server.sockets[0].getsockname()[1])
            self._servers.append(server)
        return self

    async def close(self) -> None:
        """Stop listening and end every connection."""
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def __aenter__(self) -> DelayProxy:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def stats(self) -> dict:
        return {f"{r.listen[0]}:{r.listen[1]}": {peer: dict(zip(("connections", "bytes_in", "bytes_out"), v,
                                                                strict=True))
                                                 for peer, v in r.traffic.items()} for r in self.routes}

    def _accept(self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = asyncio.ensure_future(self._serve(route, reader, writer))
        self._connections.add(connection)
        connection.add_done_callback(self._connections.discard)

    async def _serve(self, route: Route, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """One client connection: both directions until both ends are closed, or either side fails."""
        counts = route.traffic[client_w.get_extra_info("peername")[0]]
        counts[0] += 1
        target_w = None
        try:
            target_r, target_w = await asyncio.open_connection(*route.target)
            pumps = [asyncio.ensure_future(self._pump(client_r, target_w, counts, 1)),
                     asyncio.ensure_future(self._pump(target_r, client_w, counts, 2))]
            try:
                await asyncio.gather(*pumps)
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:  # the target is down, or a reset or a broken pipe on either side: the connection ends
            pass
        finally:
            for writer in (client_w, target_w):
                if writer is not None:
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: list[int],
                    slot: int) -> None:
        """One direction: chunks are read as they come and each is released at its arrival + delay."""
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(QUEUED_CHUNKS)
        await asyncio.gather(self._read(reader, queue, counts, slot), self._release(queue, writer))

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue, counts: list[int], slot: int) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(CHUNK):
            counts[slot] += len(data)
            await queue.put((loop.time() + self.delay, data))
        await queue.put((loop.time() + self.delay, None))  # the end of stream travels with the same delay

    @staticmethod
    async def _release(queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            due, data = await queue.get()
            last = max(due, last)  # a lowered delay never lets a chunk overtake the one ahead
            wait = last - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


async def _serve_commands(proxy: DelayProxy) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready " + " ".join(f"{r.listen[0]}:{r.listen[1]}" for r in proxy.routes), flush=True)
    while raw := await reader.readline():
        line = raw.decode().split()
        if not line:
            continue
        if line[0] == "delay" and len(line) == 2:
            proxy.delay = float(line[1]) / 1000
            print("ok", flush=True)
        elif line[0] == "stats":
            print(json.dumps(proxy.stats()), flush=True)
        else:
            print(f"error: unknown command {' '.join(line)!r}", flush=True)


async def _main(routes: list[Route], delay_ms: float) -> None:
    async with DelayProxy(routes, delay_ms / 1000) as proxy:
        await _serve_commands(proxy)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delay_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", action="append", required=True, type=parse_route,
                        metavar="LISTEN_IP:PORT=TARGET_IP:PORT", help="listen here, forward there (repeatable)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction (RTT / 2)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.route, args.delay_ms))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
