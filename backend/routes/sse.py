"""Server-Sent Events: the one way every API streams (the legacy HTTP API and the OpenAI API).

:func:`response` is the only place a stream becomes a response: it sets the
headers and lifts Quart's ``RESPONSE_TIMEOUT`` (60 s by default), which would
otherwise cut a long generation mid-answer, without its final frame or ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from quart import Response

DONE = "data: [DONE]\n\n"
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
           "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def encode(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for text in events:
        yield text.encode("utf-8")


def response(events: AsyncIterator[str]) -> Response:
    """A streaming response of ``events`` (already framed by :func:`event`) that no response timeout cuts."""
    streamed = Response(encode(events), headers=HEADERS)
    streamed.timeout = None  # a generation takes as long as it takes; clients disconnect to stop it
    return streamed
