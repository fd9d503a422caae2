"""Admission control: how many inference sessions may be open, globally and per client."""

from __future__ import annotations

import collections

from ..errors import BUSY, Busy


class SessionLimiter:
    def __init__(self, max_sessions: int, max_per_client: int):
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client
        self._per_client: collections.Counter[str] = collections.Counter()
        self.open = 0

    def acquire(self, client: str) -> None:
        if self.open >= self.max_sessions:
            raise Busy(f"{BUSY}: all {self.max_sessions} inference sessions are in use, retry later")
        if self._per_client[client] >= self.max_per_client:
            raise Busy(f"{BUSY}: this client already has {self.max_per_client} open sessions, retry later")
        self.open += 1
        self._per_client[client] += 1

    def release(self, client: str) -> None:
        self.open -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]
