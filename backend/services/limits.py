"""Admission control: what one client address may hold open, and what all of them may together.

* sessions: at most ``max_sessions`` in all and ``max_per_client`` per address;
* tokens: the sum of a client's sessions' ``max_length`` (what the swarm reserves attention cache for) is at
  most ``max_tokens_per_client``, so one address cannot reserve the swarm's whole cache;
* idle sessions: at most ``max_idle_per_client`` sessions of an address may be open without generating (a
  session is idle from its opening until its first generation and between generations), so an address
  cannot hold slots it does not use.
"""

from __future__ import annotations

import collections

from ..errors import BUSY, Busy


class SessionLimiter:
    def __init__(self, max_sessions: int, max_per_client: int, *, max_tokens_per_client: int | None = None,
                 max_idle_per_client: int | None = None):
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client
        self.max_tokens_per_client = max_tokens_per_client
        self.max_idle_per_client = max_idle_per_client
        self._per_client: collections.Counter[str] = collections.Counter()
        self._tokens: collections.Counter[str] = collections.Counter()
        self._idle: collections.Counter[str] = collections.Counter()
        self.open = 0

    def acquire(self, client: str, tokens: int = 0, *, idle: bool = True) -> None:
        """Admit a new session of ``tokens`` max_length for ``client``, or raise :class:`Busy`. ``idle``: it waits
        for requests (a socket's); False: it generates at once (an HTTP request's), the idle limit does not apply."""
        if self.open >= self.max_sessions:
            raise Busy(f"{BUSY}: all {self.max_sessions} inference sessions are in use, retry later")
        if self._per_client[client] >= self.max_per_client:
            raise Busy(f"{BUSY}: this client already has {self.max_per_client} open sessions, retry later")
        limit = self.max_tokens_per_client
        if limit is not None and self._tokens[client] + tokens > limit:
            raise Busy(f"{BUSY}: this client's open sessions already reserve {self._tokens[client]} tokens; "
                       f"{tokens} more is over the limit of {limit} per client: close a session or ask for a "
                       "smaller max_length")
        if idle and self.max_idle_per_client is not None and self._idle[client] >= self.max_idle_per_client:
            raise Busy(f"{BUSY}: this client already holds {self.max_idle_per_client} idle sessions (open, not "
                       "generating): use or close one first")
        self.open += 1
        self._per_client[client] += 1
        self._tokens[client] += tokens
        if idle:
            self._idle[client] += 1

    def generating(self, client: str, active: bool) -> None:
        """A session of ``client`` starts (``active``) or ends a generation."""
        self._idle[client] += -1 if active else 1
        _drop_zero(self._idle, client)

    def release(self, client: str, tokens: int = 0, *, idle: bool = True) -> None:
        """A session of ``client`` closed (``idle``: it was not generating)."""
        self.open -= 1
        self._per_client[client] -= 1
        self._tokens[client] -= tokens
        if idle:
            self._idle[client] -= 1
        for counter in (self._per_client, self._tokens, self._idle):
            _drop_zero(counter, client)


def _drop_zero(counter: collections.Counter, client: str) -> None:
    if counter[client] <= 0:
        del counter[client]
