"""Server-Sent Events framing, shared by the legacy HTTP API and the OpenAI API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

DONE = "data: [DONE]\n\n"
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
           "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def encode(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for text in events:
        yield text.encode("utf-8")
