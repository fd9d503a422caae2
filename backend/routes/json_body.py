"""Decode a JSON request body or WebSocket frame: every client mistake is one line (:class:`BadRequest`).

Bytes that are not UTF-8 and JSON nested too deeply (Python's parser would raise ``RecursionError``,
which looked like a bug in this server) are refused like any other malformed JSON; lists longer than the
``max_list_items`` setting (100,000 chat messages ...) are refused before any validation or templating.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import BadRequest, TooLarge
from .common import state

MAX_DEPTH = 64  # no request of ours nests deeper than a few levels
VALUES_PER_ITEM = 16  # values a request may hold in all, per list item allowed (a chat message has a few)


def decode(raw: bytes | str, *, subject: str = "request") -> Any:
    """The JSON value in ``raw``; :class:`BadRequest` for non-UTF-8, malformed or too deeply nested JSON,
    :class:`TooLarge` for a list longer than the ``max_list_items`` setting (before any validation runs)."""
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
    _check_shape(data, state().settings.max_list_items)
    return data


def _check_shape(data: Any, max_items: int) -> None:
    """Depth, list lengths and the number of values, walked without recursion and stopping at the first excess:
    validating a hundred thousand chat messages would hold the event loop for most of a second."""
    stack = [(data, 1)]
    budget = VALUES_PER_ITEM * max_items
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            if len(value) > max_items:
                raise TooLarge(f"a JSON list in the request has {len(value)} items, limit {max_items}")
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
        budget -= len(children)
        if budget < 0:
            raise TooLarge(f"the request has too many JSON values (limit {VALUES_PER_ITEM * max_items})")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
