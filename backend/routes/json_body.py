"""Decode a JSON request body or WebSocket frame: every client mistake is one line (:class:`BadRequest`).

Bytes that are not UTF-8 and JSON nested too deeply (Python's parser would raise ``RecursionError``,
which looked like a bug in this server) are refused like any other malformed JSON.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import BadRequest

MAX_DEPTH = 64  # no request of ours nests deeper than a few levels


def decode(raw: bytes | str, *, subject: str = "request") -> Any:
    """The JSON value in ``raw``; :class:`BadRequest` for non-UTF-8, malformed or too deeply nested JSON."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"malformed JSON: the {subject} is not UTF-8") from None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    if _too_deep(data):
        raise BadRequest(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
    return data


def _too_deep(data: Any) -> bool:
    """True when ``data`` nests more than MAX_DEPTH lists or objects (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
