"""Admission by the swarm's announced capacity: a session's first generation checks the cache its servers announce.

Every Petals server announces in the DHT, about once a minute, how much attention cache it has left
(``cache_tokens_left``, in Petals' units: a session of ``L`` tokens on a server holding ``n`` blocks takes
``2 * L * n`` of them, the rule Petals' own router applies). Before a session's first generation reserves its
``max_length`` in the swarm, :meth:`SwarmCapacity.admit` reads those announcements (through the shared
:class:`~.swarm_view.SwarmView`, at most every few seconds) and asks: does every block have an online server with
room for this session?

* yes, or the swarm does not say (a server without an announcement, a block no online server covers, a read that
  fails or takes over :data:`READ_WAIT` seconds): the generation goes ahead;
* no, and this app holds sessions of that model (open, or kept by the prompt cache) whose closing could free what
  is missing: the request waits in line for the cache (:meth:`~.limits.SessionLimiter.wait_for_cache`, its place
  reported), idle and kept sessions yielding, instead of trying and waiting for Petals' allocation timeout;
* no, and nothing this app holds could free enough: ``attention cache is full`` at once.

Announcements are up to a minute old, so they are only a hint: cache this app freed within :data:`STALE_SECONDS`
counts as free already (the announcement may predate it), and a generation that then finds the swarm full still
takes the CacheFull path of :class:`~.generation.Conversation` (it waits for sessions here to close, then fails).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..engine.types import EngineSession
from ..errors import CACHE_FULL, CacheFull
from .fair_queue import OnPosition
from .limits import SessionLimiter
from .swarm_view import SwarmView

logger = logging.getLogger(__name__)

READ_WAIT = 1.0  # seconds a first generation waits for the swarm's announcements before going ahead without them
STALE_SECONDS = 75.0  # how old an announcement may be: servers re-announce every minute, the view caches 5 s


def announced_room(summary: dict[str, Any]) -> int | None:
    """The largest ``max_length`` a new session could reserve on every block, by the servers' announcements
    (``Engine.swarm``'s summary); None when they do not tell (no blocks, a block no online server covers, an
    online server without ``cache_tokens_left``)."""
    online = [server for server in summary.get("servers") or () if server.get("state") == "online"]
    room = None
    for block in range(summary.get("blocks_total") or 0):
        covering = [server for server in online if any(a <= block < b for a, b in server.get("spans") or ())]
        if not covering or any(server.get("cache_tokens_left") is None for server in covering):
            return None
        best = max(server["cache_tokens_left"] // (2 * max(1, server["end"] - server["start"]))
                   for server in covering)
        room = best if room is None else min(room, best)
    return room


def _gone(session: EngineSession) -> bool:
    return bool(getattr(session, "closed", False)) or getattr(session, "closing", None) is not None


class SwarmCapacity:
    """The announced cache, and the engine sessions that hold (or are reserving) cache in the swarm for this app:
    what their closing could free."""

    def __init__(self, view: SwarmView, limiter: SessionLimiter):
        self.view = view
        self._limiter = limiter
        self._sessions: list[EngineSession] = []  # reserving or holding cache, maybe closed since (kept ones too)
        self._reads: dict[str, asyncio.Task] = {}

    def reserving(self, session: EngineSession) -> None:
        """``session``'s first generation reserves its cache now (it is forgotten once the engine closed it)."""
        self._sessions = [s for s in self._sessions if not _gone(s)]
        self._sessions.append(session)

    def forget(self, session: EngineSession) -> None:
        """``session`` holds no cache after all (the swarm refused its reservation)."""
        self._sessions = [s for s in self._sessions if s is not session and not _gone(s)]

    def held(self, model_key: str, *, besides: EngineSession | None = None) -> int:
        """Tokens of cache (their ``max_length``) the sessions of ``model_key`` hold or are reserving here."""
        self._sessions = [s for s in self._sessions if not _gone(s)]
        return sum(s.max_length for s in self._sessions if s.model_key == model_key and s is not besides)

    async def room(self, model_key: str) -> int | None:
        """:func:`announced_room` of the model's swarm now; None when the read fails or is slow (it goes on, for
        the next request)."""
        read = self._reads.get(model_key)
        if read is None or read.done():
            read = self._reads[model_key] = asyncio.ensure_future(self.view.servers(model_key))
            read.add_done_callback(lambda task: task.cancelled() or task.exception())  # never "not retrieved"
        try:
            return announced_room(await asyncio.wait_for(asyncio.shield(read), READ_WAIT))
        except Exception:  # the swarm does not say: no hint
            logger.debug("no announced capacity for %s", model_key, exc_info=True)
            return None

    async def admit(self, session: EngineSession, client: str, *, max_wait: float,
                    on_position: OnPosition | None = None) -> None:
        """Before ``session``'s first generation (which then calls :meth:`reserving`): return when the
        announcements leave room for it (or do not tell); wait in line while sessions here could free what is
        missing; CacheFull when they could not, or when ``max_wait`` seconds pass first."""
        room = await self.room(session.model_key)
        missing = 0 if room is None else session.max_length - room
        recent = self._limiter.freed_within(STALE_SECONDS)  # maybe not announced yet
        if missing > recent:
            await self._wait(session, client, room or 0, missing, recent, max_wait, on_position)

    async def _wait(self, session: EngineSession, client: str, room: int, missing: int, recent: int,
                    max_wait: float, on_position: OnPosition | None) -> None:
        held = self.held(session.model_key, besides=session)
        error = CacheFull(f"The swarm is out of capacity: {CACHE_FULL} (its servers announce room for {room} more "
                          f"tokens, this session reserves {session.max_length}), retry later or ask for a smaller "
                          "max_length")
        if held + recent < missing:
            raise error
        await self._limiter.wait_for_cache(client, missing, error, since=self._limiter.freed_tokens - recent,
                                           max_wait=max_wait, on_position=on_position)
