"""The delaying TCP proxy (``bench/delay_proxy.py``) on loopback: delay, bytes, order, half-close, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time

import pytest
from conftest import REPO

from bench.delay_proxy import DelayProxy, Route, parse_route

pytestmark = pytest.mark.timeout(60)


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()  # the client's half-close, answered with ours
        await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _proxied(delay: float):
    """An echo server behind a proxy; returns (server, proxy, proxy address)."""
    server = await _echo_server()
    proxy = await DelayProxy([Route(("127.0.0.1", 0), server.sockets[0].getsockname()[:2])], delay).start()
    return server, proxy, proxy.routes[0].listen


async def _round_trip(address, payload: bytes = b"ping") -> float:
    reader, writer = await asyncio.open_connection(*address)
    started = time.perf_counter()
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    took = time.perf_counter() - started
    writer.close()
    return took


def test_round_trip_takes_twice_the_delay():
    async def scenario():
        server, proxy, address = await _proxied(0.05)
        async with server, proxy:
            return [await _round_trip(address) for _ in range(3)]

    for took in asyncio.run(scenario()):
        assert 0.1 <= took < 0.1 + 0.2, took


def test_bytes_and_order_are_kept_both_ways():
    rng = random.Random(7)
    chunks = [rng.randbytes(rng.choice([1, 17, 1000, 70_000, 300_000])) for _ in range(40)]
    payload = b"".join(chunks)

    async def scenario():
        server, proxy, address = await _proxied(0.002)
        async with server, proxy:
            reader, writer = await asyncio.open_connection(*address)

            async def send():
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                writer.write_eof()

            sending = asyncio.create_task(send())
            echoed = await reader.read()  # until the server's end of stream, which follows ours
            await sending
            writer.close()
            return echoed, proxy.stats()

    echoed, stats = asyncio.run(scenario())
    assert echoed == payload
    (route,) = stats.values()
    assert route["127.0.0.1"] == {"connections": 1, "bytes_in": len(payload), "bytes_out": len(payload)}


def test_chunks_are_not_serialized_behind_each_others_delay():
    """Ten chunks sent 20 ms apart through a 150 ms proxy arrive 20 ms apart, each about 150 ms after its send
    (serialized delays would put the last one 1.5 s late)."""
    delay, gap, count, size = 0.15, 0.02, 10, 100

    async def scenario():
        arrivals: list[float] = []
        done = asyncio.Event()

        async def sink(reader, writer):
            received = 0
            while data := await reader.read(65536):
                received += len(data)
                now = time.perf_counter()
                while len(arrivals) < received // size:
                    arrivals.append(now)
            done.set()
            writer.close()

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        async with server, DelayProxy([Route(("127.0.0.1", 0), server.sockets[0].getsockname()[:2])],
                                      delay) as proxy:
            _, writer = await asyncio.open_connection(*proxy.routes[0].listen)
            sent = []
            for i in range(count):
                sent.append(time.perf_counter())
                writer.write(bytes([i]) * size)
                await writer.drain()
                await asyncio.sleep(gap)  # pacing the sender, not waiting for anything
            writer.close()
            await asyncio.wait_for(done.wait(), 10)
        return sent, arrivals

    sent, arrivals = asyncio.run(scenario())
    assert len(arrivals) == count
    lags = [a - s for s, a in zip(sent, arrivals, strict=True)]
    assert all(delay <= lag < delay + 0.1 for lag in lags), lags


def test_lowering_the_delay_never_reorders_a_live_connection():
    async def scenario():
        server, proxy, address = await _proxied(0.2)
        async with server, proxy:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"first.")
            await writer.drain()
            proxy.delay = 0.0  # "second" would be due before "first" if each chunk were timed alone
            writer.write(b"second")
            await writer.drain()
            writer.write_eof()
            echoed = await reader.read()
            writer.close()
            return echoed

    assert asyncio.run(scenario()) == b"first.second"


def test_half_close_is_forwarded_and_close_ends_every_connection():
    async def scenario():
        server, proxy, address = await _proxied(0.01)
        async with server:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"bye")
            writer.write_eof()  # half-close: the echo server still answers, then closes its side
            assert await reader.read() == b"bye"
            writer.close()
            # a connection left open is ended by close(), and nothing of the proxy keeps running
            idle_r, idle_w = await asyncio.open_connection(*address)
            await asyncio.wait_for(_until(lambda: proxy._connections), 5)
            await proxy.close()
            assert await asyncio.wait_for(idle_r.read(), 5) == b""
            idle_w.close()
            assert not proxy._connections
            with pytest.raises(OSError):
                await asyncio.open_connection(*address)

    asyncio.run(scenario())


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.01)


def test_parse_route():
    assert parse_route("10.0.0.2:41000=127.0.0.1:31000").target == ("127.0.0.1", 31000)
    with pytest.raises(ValueError, match="LISTEN_IP:PORT=TARGET_IP:PORT"):
        parse_route("10.0.0.2:41000")


def test_command_line_proxy_takes_delay_and_stats_on_stdin_and_exits_when_it_closes():
    async def scenario():
        server = await _echo_server()
        target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            proxy = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.delay_proxy", "--route", f"127.0.0.1:0={target}", cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                ready = (await asyncio.wait_for(proxy.stdout.readline(), 30)).decode().split()
                assert ready[0] == "ready", ready
                host, port = ready[1].rsplit(":", 1)
                assert await _round_trip((host, int(port))) < 0.05
                proxy.stdin.write(b"delay 60\n")
                assert await proxy.stdout.readline() == b"ok\n"
                assert await _round_trip((host, int(port)), b"abc") >= 0.12
                proxy.stdin.write(b"stats\n")
                stats = json.loads(await proxy.stdout.readline())
                assert stats[ready[1]]["127.0.0.1"]["connections"] == 2
                assert stats[ready[1]]["127.0.0.1"]["bytes_in"] == len(b"ping") + len(b"abc")
                proxy.stdin.close()
                assert await asyncio.wait_for(proxy.wait(), 10) == 0
            finally:
                if proxy.returncode is None:
                    proxy.kill()
                    await proxy.wait()

    asyncio.run(scenario())
