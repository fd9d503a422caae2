"""A bound on what a client that does not read its stream can make this server hold.

How Hypercorn writes (``hypercorn/asyncio/tcp_server.py``, ``protocol_send``): every WebSocket frame and every
chunk of a streamed response is ``writer.write(data)`` into the connection's asyncio transport, then
``await writer.drain()``, which waits only while the transport's own buffer is over its high-water mark (64 KiB by
default). The transport hands data to the kernel's socket send buffer first, and Linux grows that buffer up to
``net.ipv4.tcp_wmem``'s maximum (4 MiB). So for a client that never reads, a token stream of a few KB/s fills
megabytes before ``drain`` ever waits, and a timeout on the send notices nothing for hours (probed: 121 KB
queued after 120 s, the connection never dropped).

:func:`limit` shrinks both buffers of one streaming connection (a WebSocket, or a Server-Sent Events response) to
``max_unread_bytes`` together: the socket's send buffer (``SO_SNDBUF``; this also stops its growth) and the
transport's high-water mark. Once they are full, a send waits in ``drain``; the route gives up after
``send_timeout`` seconds and :meth:`Bound.abort` drops the connection, discarding what is buffered (a client that
reads nothing would never read a close frame either).

The transport is not part of ASGI: :func:`middleware` finds it by following the ``send`` callable Hypercorn
hands the app back to Hypercorn's ``TCPServer`` and puts it in the scope. Any other server (or an HTTP/2
connection, whose transport is shared by many streams) gets no bound here: sends still time out, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

logger = logging.getLogger(__name__)

SCOPE_KEY = "petals_chat.transport"
_MAX_HOPS = 6


def find_transport(send: Any) -> asyncio.WriteTransport | None:
    """The asyncio transport behind a Hypercorn ASGI ``send`` callable, or None (another server).

    Hypercorn's chain: the stream's ``app_send`` -> its protocol's ``send`` -> ``TCPServer.protocol_send``, whose
    owner holds the connection's ``writer``.
    """
    callable_ = send
    for _ in range(_MAX_HOPS):
        owner = getattr(callable_, "__self__", None)
        if owner is None:
            return None
        transport = getattr(getattr(owner, "writer", None), "transport", None)
        if isinstance(transport, asyncio.WriteTransport):
            return transport
        callable_ = getattr(owner, "send", None)
    return None


def middleware(app):
    """Wrap an ASGI app: HTTP/1.1 and WebSocket scopes carry their connection's transport under SCOPE_KEY."""

    async def with_transport(scope, receive, send):
        if scope.get("type") in ("http", "websocket") and scope.get("http_version") in ("1.0", "1.1"):
            transport = find_transport(send)
            if transport is not None:
                scope = {**scope, SCOPE_KEY: transport}
        await app(scope, receive, send)

    return with_transport


class Bound:
    """One connection's bound (see :func:`limit`); ``transport`` is None where there is none to apply."""

    def __init__(self, transport: asyncio.WriteTransport | None):
        self.transport = transport

    def abort(self) -> None:
        """Drop the connection now, discarding what is buffered for it."""
        if self.transport is not None and not self.transport.is_closing():
            logger.info("dropping a client that does not read its stream")
            self.transport.abort()


def limit(scope: dict, max_unread_bytes: int) -> Bound:
    """Bound the bytes buffered for this connection's unread replies to about ``max_unread_bytes``
    (0: leave the buffers as they are, but still allow :meth:`Bound.abort`)."""
    transport = scope.get(SCOPE_KEY)
    if transport is None or transport.is_closing():
        return Bound(None)
    if max_unread_bytes > 0:
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            # Linux doubles the value (bookkeeping included): half the bound in the kernel ...
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(1, max_unread_bytes // 4))
        # ... and half in the transport, after which Hypercorn's drain() waits
        high = max(1, max_unread_bytes // 2)
        transport.set_write_buffer_limits(high=high, low=high // 4)
    return Bound(transport)


class SendWatch:
    """For streams whose sends the app does not await itself (a streamed response): :meth:`sending` arms a timer
    that aborts the connection if the send has not completed ``timeout`` seconds later."""

    def __init__(self, bound: Bound, timeout: float):
        self.bound = bound
        self.timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    def sending(self) -> None:
        if self.bound.transport is not None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expired)

    def sent(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        logger.info("a streamed response was not read for %g seconds", self.timeout)
        self.bound.abort()
