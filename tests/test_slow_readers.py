"""A client that never reads its stream is dropped within a bound, its session closed, others unaffected.

A real Hypercorn (in a thread, on the fake engine with an endless fast token stream); the attacker is a raw socket
with a 4 KiB receive buffer that sends its request and never reads again, so its kernel buffers fill at once. The
server's own buffers for it are held to ``max_unread_bytes`` (backend/slow_readers.py), and once they are full a send
waits ``send_timeout`` seconds at most.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import threading
import time

import httpx
import pytest
import websockets.sync.client
from conftest import free_port, poll_until
from fake_engine import FakeEngine, in_process_app

from backend.engine.types import Chunk

BLOCK = "x" * 1000  # one token's text: frames of about 1 KB
MAX_UNREAD = 16384
SEND_TIMEOUT = 1.0
# the drop comes send_timeout after the buffers are full (at once: the stream is fast), plus the 2 s a close frame
# may take; the rest is slack for a busy 2-core machine
DROP_BOUND = SEND_TIMEOUT + 2 + 5


class FastEngine(FakeEngine):
    """Endless 1 KB tokens as fast as they are taken; ``inputs="short"``: three tokens and a stop."""

    def __init__(self):
        super().__init__()
        self.produced = 0

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        if inputs == "short":
            for _ in range(3):
                yield Chunk(text="y", tokens=1)
            yield Chunk(text="", tokens=0, finish_reason="stop")
            return
        while True:
            self.produced += 1
            yield Chunk(text=BLOCK, tokens=1)
            await asyncio.sleep(0)


@contextlib.contextmanager
def serving(app):
    """``app`` on a real Hypercorn in a thread of its own; yields the port."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait)),
                              daemon=True)
    thread.start()
    try:
        poll_until(lambda: _answers(port), 30, "the server to listen")
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)


def _answers(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    return False


def _never_reader(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
    sock.connect(("127.0.0.1", port))
    return sock


def _ws_frame(payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    mask = os.urandom(4)
    header = bytes([0x81]) + (bytes([0x80 | len(data)]) if len(data) < 126 else struct.pack("!BH", 0x80 | 126,
                                                                                              len(data)))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _read_handshake(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # byte by byte: nothing after the handshake is read
    return answer


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read (now that the server gave up on us) until the connection ends; True if it does within ``timeout``."""
    sock.settimeout(timeout)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return True


def _victim_ws(port: int) -> str:
    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/api/v2/generate", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": 64}))
        assert json.loads(ws.recv(10))["ok"]
        ws.send(json.dumps({"type": "generate", "inputs": "short", "max_new_tokens": 1, "stop_sequence": "</s>"}))
        text = ""
        while not (reply := json.loads(ws.recv(10)))["stop"]:
            text += reply["outputs"]
        return text + reply["outputs"]


def _assert_dropped(engine: FastEngine, port: int, sock: socket.socket) -> None:
    """Once the never-reader's generation runs: others are served meanwhile, and the server drops it within
    ``DROP_BOUND`` (its session closed, its connection ended), having buffered no more than its bound for it."""
    started = time.monotonic()
    poll_until(lambda: engine.produced > 0, 10, "the generation to start")
    try:
        assert _victim_ws(port) == "yyy"  # served meanwhile
        poll_until(lambda: engine.open_sessions == 0, DROP_BOUND, "the never-reader's session to be closed")
        dropped_after = time.monotonic() - started
        assert _closed_by_server(sock, 5)
    finally:
        sock.close()
    # what the server buffered for it: its bound, plus what the client's 4 KiB receive buffer took (Linux doubles
    # it), plus a frame or two in flight
    assert engine.produced * len(BLOCK) < MAX_UNREAD + 2 * 4096 * 2 + 8 * len(BLOCK), engine.produced
    assert dropped_after < DROP_BOUND


@pytest.fixture
def fast(registry):
    engine = FastEngine()
    app = in_process_app(engine, registry, send_timeout=SEND_TIMEOUT, max_unread_bytes=MAX_UNREAD)
    with serving(app) as port:
        yield engine, port


def test_websocket_reader_that_never_reads_is_dropped(fast):
    engine, port = fast
    sock = _never_reader(port)
    sock.sendall(f"GET /api/v2/generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    assert b" 101 " in _read_handshake(sock)
    sock.sendall(_ws_frame({"type": "open_inference_session", "model": "tiny", "max_length": 512}))
    sock.sendall(_ws_frame({"type": "generate", "inputs": "go", "max_new_tokens": 1, "stop_sequence": "</s>"}))
    _assert_dropped(engine, port, sock)
    assert _victim_ws(port) == "yyy"  # and after


@pytest.mark.parametrize("path, body", [
    ("/api/v1/generate", {"model": "tiny", "inputs": "go", "max_new_tokens": 2000, "stream": True}),
    ("/v1/completions", {"model": "tiny", "prompt": "go", "max_tokens": 2000, "stream": True}),
])
def test_sse_reader_that_never_reads_is_dropped(fast, path, body):
    engine, port = fast
    sock = _never_reader(port)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    _assert_dropped(engine, port, sock)
