"""Turn WebSocket compression (permessage-deflate) off in Hypercorn.

Hypercorn 0.18 always accepts a client's permessage-deflate offer (there is no
setting for it). For this app that is a bad trade: a streamed token is a JSON
frame of a few dozen bytes, so compression saves next to nothing, costs CPU on
every frame (about 1 ms of the backend's ~3 ms per token, measured by
``make bench``), and keeps zlib state per connection; after an abrupt
disconnect that state stays behind (measured: about 18 MiB of RSS per 1,000
connections that exchanged a message and were then aborted, none without
compression). :func:`configure` makes the handshake decline the offer, so
clients fall back to plain frames, which every WebSocket client supports.
The setting ``ws_compression`` turns it back on.
"""

from __future__ import annotations

from wsproto.extensions import PerMessageDeflate


class _DeclinedDeflate(PerMessageDeflate):
    """permessage-deflate that declines every offer (the extension is then never enabled)."""

    def accept(self, offer: str) -> None:  # type: ignore[override]
        return None


def configure(enabled: bool) -> None:
    """Offer (``enabled``) or decline permessage-deflate in every Hypercorn WebSocket handshake."""
    from hypercorn.protocol import ws_stream

    ws_stream.PerMessageDeflate = PerMessageDeflate if enabled else _DeclinedDeflate
