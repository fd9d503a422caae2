"""Server-Sent Events: the one way every API streams (the legacy HTTP API and the OpenAI API).

:func:`response` is the only place a stream becomes a response: it sets the
headers and lifts Quart's ``RESPONSE_TIMEOUT`` (60 s by default), which would
otherwise cut a long generation mid-answer, without its final frame or ``[DONE]``, and bounds what a
client that does not read holds (:mod:`backend.slow_readers`): the connection's buffers are kept to
``max_unread_bytes``, and a chunk not taken within ``send_timeout`` seconds drops the connection (the
generation then stops and its session is closed, as when the client disconnects).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from quart import Response, has_request_context, request

from .. import slow_readers
from .common import state

DONE = "data: [DONE]\n\n"
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
           "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def encode(events: AsyncIterator[str], watch: slow_readers.SendWatch | None = None) -> AsyncIterator[bytes]:
    """``events`` as bytes; ``watch`` times each chunk's send (the time until the next one is asked for)."""
    async for text in events:
        if watch is not None:
            watch.sending()
        try:
            yield text.encode("utf-8")
        finally:
            if watch is not None:
                watch.sent()


def response(events: AsyncIterator[str]) -> Response:
    """A streaming response of ``events`` (already framed by :func:`event`) that no response timeout cuts."""
    streamed = Response(encode(events, _watch()), headers=HEADERS)
    streamed.timeout = None  # a generation takes as long as it takes; clients disconnect to stop it
    return streamed


def _watch() -> slow_readers.SendWatch | None:
    if not has_request_context():
        return None
    settings = state().settings
    bound = slow_readers.limit(request.scope, settings.max_unread_bytes)
    return slow_readers.SendWatch(bound, settings.send_timeout) if bound.transport is not None else None
