"""Admission control: what one client address may hold open, and what all of them may together.

* sessions: at most ``max_sessions`` in all and ``max_per_client`` per address;
* tokens: the sum of a client's sessions' ``max_length`` (what the swarm reserves attention cache for) is at
  most ``max_tokens_per_client``, so one address cannot reserve the swarm's whole cache;
* idle sessions: at most ``max_idle_per_client`` sessions of an address may be open without generating (a
  session is idle from its opening until its first generation and between generations), so an address
  cannot hold slots it does not use;
* generations: at most ``max_generations`` run at once;
* idle sessions yield (:mod:`.yielding`): a request that waits for a session slot makes the live session idle the
  longest close; one that waits for cache makes the prompt cache's kept sessions close first, then a live one;
* the swarm's attention cache: a session's first generation that finds it full (``CacheFull``) waits in line
  (:meth:`SessionLimiter.wait_for_cache`) until sessions holding as many tokens as it needs have closed here.

When the server's slots (sessions or generations) are all taken, :meth:`SessionLimiter.admit` and
:meth:`SessionLimiter.start_generation` wait in line (:class:`~.fair_queue.FairQueue`, round robin by client address)
for ``queue_timeout`` seconds at most, then fail with the usual ``Server is busy`` line; a client's own share
(its sessions, tokens, idle sessions) is never waited for: over it is an error at once.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from ..errors import BUSY, ApiError, Busy
from .fair_queue import FairQueue, OnPosition
from .yielding import IdleSessions

FREED_MEMORY = 120.0  # seconds the limiter remembers when cache was freed (SessionLimiter.freed_within)


class SessionLimiter:
    def __init__(self, max_sessions: int, max_per_client: int, *, max_tokens_per_client: int | None = None,
                 max_idle_per_client: int | None = None, max_generations: int | None = None,
                 queue_timeout: float = 0.0):
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client
        self.max_tokens_per_client = max_tokens_per_client
        self.max_idle_per_client = max_idle_per_client
        self._per_client: collections.Counter[str] = collections.Counter()
        self._tokens: collections.Counter[str] = collections.Counter()
        self._idle: collections.Counter[str] = collections.Counter()
        self.open = 0
        self.max_generations = max_generations
        self.generations = 0
        self.session_queue = FairQueue(queue_timeout, max_per_client)
        self.generation_queue = FairQueue(queue_timeout, max_per_client)
        self.cache_queue = FairQueue(queue_timeout, max_per_client)
        self.freed_tokens = 0  # max_length of every session closed so far (their cache freed in the swarm)
        self._cache_credit = 0  # of those, tokens freed while generations wait for cache, not yet handed out
        self._freed_log: collections.deque[tuple[float, int]] = collections.deque()  # (when, tokens) freed
        self.idle_sessions = IdleSessions()

    def acquire(self, client: str, tokens: int = 0, *, idle: bool = True) -> None:
        """Admit a new session of ``tokens`` max_length for ``client``, or raise :class:`Busy`. ``idle``: it waits
        for requests (a socket's); False: it generates at once (an HTTP request's), the idle limit does not apply."""
        if not self._take(client, tokens, idle):
            raise self._sessions_full()

    async def admit(self, client: str, tokens: int = 0, *, idle: bool = True,
                    on_position: OnPosition | None = None) -> None:
        """:meth:`acquire`, waiting in line while every session slot is taken (``on_position``: told the place)."""
        self._check_client(client, tokens, idle)
        if self.open >= self.max_sessions and self.session_queue.max_wait > 0:
            self.idle_sessions.yield_slot()  # under pressure: the longest idle session gives its slot to the line
        await self.session_queue.wait(client, lambda: self._take(client, tokens, idle), self._sessions_full,
                                      on_position=on_position, undo=lambda: self.release(client, tokens, idle=idle))

    def idle(self, key: object, close: Callable[[], None], *, kept_tokens: int | None = None) -> None:
        """``key``'s session waits for requests: under pressure, ``close()`` may be called to make it yield.
        ``kept_tokens``: a session the prompt cache keeps (it holds that much cache, no slot)."""
        self.idle_sessions.add(key, close, kept_tokens=kept_tokens)

    def not_idle(self, key: object) -> None:
        self.idle_sessions.remove(key)

    def _sessions_full(self) -> Busy:
        return Busy(f"{BUSY}: all {self.max_sessions} inference sessions are in use, retry later")

    def _take(self, client: str, tokens: int, idle: bool) -> bool:
        if self.open >= self.max_sessions:
            return False
        self._check_client(client, tokens, idle)
        self.open += 1
        self._per_client[client] += 1
        self._tokens[client] += tokens
        if idle:
            self._idle[client] += 1
        return True

    def _check_client(self, client: str, tokens: int, idle: bool) -> None:
        """Raise :class:`Busy` when a new session would be over ``client``'s own share."""
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

    def generating(self, client: str, active: bool) -> None:
        """A session of ``client`` starts (``active``) or ends a generation."""
        self._idle[client] += -1 if active else 1
        _drop_zero(self._idle, client)

    def release(self, client: str, tokens: int = 0, *, idle: bool = True, cache_freed: bool = True) -> None:
        """A session of ``client`` closed (``idle``: it was not generating; ``cache_freed``: False when its engine
        session stays open elsewhere, its cache still held in the swarm)."""
        self.open -= 1
        self._per_client[client] -= 1
        self._tokens[client] -= tokens
        if idle:
            self._idle[client] -= 1
        for counter in (self._per_client, self._tokens, self._idle):
            _drop_zero(counter, client)
        self.session_queue.serve()
        if cache_freed:
            self.cache_freed(tokens)

    def cache_freed(self, tokens: int) -> None:
        """Sessions of ``tokens`` max_length in all were closed in the swarm: generations waiting for cache may fit."""
        self.freed_tokens += tokens
        now = time.monotonic()
        self._freed_log.append((now, tokens))
        while self._freed_log[0][0] < now - FREED_MEMORY:
            self._freed_log.popleft()
        if len(self.cache_queue):
            self._cache_credit += tokens
            self.cache_queue.serve()

    def freed_within(self, seconds: float) -> int:
        """Tokens of cache freed in the last ``seconds`` (at most :data:`FREED_MEMORY`)."""
        since = time.monotonic() - seconds
        return sum(tokens for when, tokens in self._freed_log if when >= since)

    async def wait_for_cache(self, client: str, tokens: int, error: ApiError, *, since: int, max_wait: float,
                             on_position: OnPosition | None = None) -> None:
        """Wait in line until sessions of ``tokens`` max_length in all have closed (since ``freed_tokens`` was
        ``since``, or while waiting), so a session of ``tokens`` may fit in the swarm's cache again; ``error``
        (the CacheFull) after ``max_wait`` seconds. Idle sessions yield what is missing (kept ones first)."""
        if not len(self.cache_queue):
            self._cache_credit = 0
        self._cache_credit += self.freed_tokens - since
        if self.cache_queue.max_wait > 0 and max_wait > 0 and self._cache_credit < tokens:
            self.idle_sessions.yield_cache(tokens - self._cache_credit)  # freed in the swarm as they close

        def take() -> bool:
            if self._cache_credit < tokens:
                return False
            self._cache_credit -= tokens
            return True

        await self.cache_queue.wait(client, take, lambda: error, on_position=on_position, max_wait=max_wait)

    async def start_generation(self, client: str, *, on_position: OnPosition | None = None) -> None:
        """Take a generation slot, waiting in line while all ``max_generations`` are taken; then
        :meth:`end_generation` must follow."""
        await self.generation_queue.wait(client, self._take_generation, self._generations_full,
                                         on_position=on_position, undo=self.end_generation)

    def _take_generation(self) -> bool:
        if self.max_generations is not None and self.generations >= self.max_generations:
            return False
        self.generations += 1
        return True

    def _generations_full(self) -> Busy:
        return Busy(f"{BUSY}: too many generations running, retry later")

    def end_generation(self) -> None:
        self.generations -= 1
        self.generation_queue.serve()


def _drop_zero(counter: collections.Counter, client: str) -> None:
    if counter[client] <= 0:
        del counter[client]
