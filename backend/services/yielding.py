"""Idle sessions yield under pressure: which sessions close when a request waits for capacity.

Two kinds of sessions hold capacity without using it:

* live idle sessions: a socket's session waiting for its next request; it holds a session slot and, once it has
  generated, attention cache in the swarm;
* kept sessions: the prompt cache's (:mod:`.prompt_cache`), finished requests kept for prompt prefix reuse; they
  hold attention cache in the swarm but no session slot (the limiter released it when the cache took them).

A request waiting for a session slot makes the live session idle the longest close (a kept session would free no
slot). A request waiting for attention cache makes kept sessions close first, least recently kept first, until
they free as many tokens as it lacks; only when they cannot does the live session idle the longest close too.
Closing is asynchronous: ``close()`` asks, and the session's owner releases what it held (the limiter's
``release`` or ``cache_freed``), which serves the requests in line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Idle:
    since: float
    close: Callable[[], None]
    kept_tokens: int | None  # a kept session's max_length (the cache it holds); None: a live session


class IdleSessions:
    def __init__(self) -> None:
        self._sessions: dict[object, _Idle] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, key: object, close: Callable[[], None], *, kept_tokens: int | None = None) -> None:
        """``key``'s session is idle; ``close()`` makes it yield. ``kept_tokens``: a kept session's max_length."""
        self._sessions[key] = _Idle(time.monotonic(), close, kept_tokens)

    def remove(self, key: object) -> None:
        self._sessions.pop(key, None)

    def yield_slot(self) -> bool:
        """Close the live session idle the longest (its slot and cache go to the line); False when there is none."""
        live = [key for key, idle in self._sessions.items() if idle.kept_tokens is None]
        if not live:
            return False
        self._close(min(live, key=lambda key: self._sessions[key].since))
        return True

    def yield_cache(self, tokens: int) -> None:
        """Free ``tokens`` of attention cache: kept sessions first, least recently kept first; when they hold
        fewer, the live session idle the longest too."""
        kept = sorted((key for key, idle in self._sessions.items() if idle.kept_tokens is not None),
                      key=lambda key: self._sessions[key].since)
        freed = 0
        for key in kept:
            if freed >= tokens:
                return
            freed += self._sessions[key].kept_tokens or 0
            self._close(key)
        if freed < tokens:
            self.yield_slot()

    def _close(self, key: object) -> None:
        self._sessions.pop(key).close()
