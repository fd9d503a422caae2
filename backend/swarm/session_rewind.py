"""Session rewind for the stock Petals 2.2 server: a step may start at an earlier position of its session.

A Petals 2.2 inference session only grows: each step's tokens are written after the previous ones
(``iterate_rpc_inference`` in ``petals/server/block_functions.py`` keeps the position in a local variable). With
:func:`install`, a step whose metadata carries ``start_from_position: P`` (the field of Petals' later releases)
is written from position ``P`` on instead (``0 <= P <=`` the current position): the tokens after ``P`` are
forgotten, so a client can continue a session from any point of its history without prefilling it again (the
prompt cache does, when a new prompt diverges from a kept session's history).

How, without copying Petals' function: the server's ``iterate_rpc_inference`` is wrapped; the wrapper follows each
session's true position (from each step's tensor size and ``start_from_position``) and the attention-cache
``InferenceMetadata`` the stock function builds is given that position (Petals' own count, which keeps growing,
less the tokens rewound). The length limit is checked on the true position. Sessions that never rewind run
exactly as before.

Servers with it announce their version with :data:`MARK` appended, so that clients rewind only on routes where
every server has it (:mod:`backend.engine.rewind`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

MARK = "+rewind"  # appended to the version a server announces
FIELD = "start_from_position"  # the step metadata field
_NO_LIMIT = 1 << 40  # the stock function's own length check sees Petals' count, which may exceed the true one


class _Position:
    """One session's true position, and how far Petals' own count is ahead of it."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.position = 0
        self.rewound = 0

    async def steps(self, steps: AsyncIterator[tuple[Any, dict]]) -> AsyncIterator[tuple[Any, dict]]:
        async for request, metadata in steps:
            start = metadata.get(FIELD)
            if start is not None:
                if not (isinstance(start, int) and 0 <= start <= self.position):
                    raise ValueError(f"{FIELD} must be an int between 0 and the session's position "
                                     f"{self.position}, got {start!r}")
                self.rewound += self.position - start
                self.position = start
            size = request.tensors[0].size if request.tensors else ()
            length = int(size[1]) if len(size) > 1 else 0
            if self.position + length > self.max_length:
                raise ValueError(f"Maximum length exceeded: prefix {self.position} + current {length} exceeds "
                                 f"pre-allocated maximum {self.max_length}")
            yield request, metadata
            self.position += length


def install() -> None:
    """Make the Petals server started later in this process take ``start_from_position`` and announce it."""
    import petals
    from petals.server import block_functions, handler

    if petals.__version__.endswith(MARK):
        return
    sessions: dict[Any, _Position] = {}  # the first cache handle of each of a session's blocks -> its position
    stock_iterate, stock_metadata = handler.iterate_rpc_inference, block_functions.InferenceMetadata

    def metadata(uid, prefix_length, handles, *args):
        session = sessions.get(handles[0] if handles else None)
        return stock_metadata(uid, prefix_length - (session.rewound if session else 0), handles, *args)

    async def iterate_rpc_inference(*args, input_iterator, cache_handles, max_length, **kwargs):
        session = _Position(max_length)
        keys = [handles[0] for handles in cache_handles if handles]  # allocated for this session: unique
        sessions.update(dict.fromkeys(keys, session))
        try:
            async for item in stock_iterate(*args, input_iterator=session.steps(input_iterator),
                                            cache_handles=cache_handles, max_length=_NO_LIMIT, **kwargs):
                yield item
        finally:
            for key in keys:
                sessions.pop(key, None)

    handler.iterate_rpc_inference = iterate_rpc_inference
    block_functions.InferenceMetadata = metadata
    petals.__version__ += MARK
