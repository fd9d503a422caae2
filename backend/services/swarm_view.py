"""The swarm's servers per model, read from the engine at most once every few seconds.

The page's swarm panel polls ``GET /api/v1/swarm`` while it is open; every reader within ``ttl`` seconds
shares one DHT read, and concurrent readers wait for the same one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..engine.types import Engine

CACHE_SECONDS = 5.0


class SwarmView:
    def __init__(self, engine: Engine, *, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def servers(self, model_key: str) -> dict[str, Any]:
        """The model's servers (``Engine.swarm``), at most ``ttl`` seconds old, with ``age_s``."""
        lock = self._locks.setdefault(model_key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(model_key)
            if cached is None or self._clock() - cached[0] >= self._ttl:
                cached = (self._clock(), await self._engine.swarm(model_key))
                self._cache[model_key] = cached
        return {**cached[1], "age_s": round(self._clock() - cached[0], 1)}
