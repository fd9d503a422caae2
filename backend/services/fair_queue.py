"""Waiting in line for capacity, fairly across client addresses.

A request that finds no capacity free (every session slot or generation slot taken) waits here instead of failing,
for ``max_wait`` seconds at most; then it fails at once with its usual one-line error. Waiters are served round robin
by client address: the client at the head of the ring gets its oldest waiter served and goes to the back, so a client
with many requests in line cannot starve one with a single request. A waiter's place in line (1: next) is reported
to ``on_position`` whenever it changes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..errors import ApiError

Take = Callable[[], bool]  # take the capacity now (True), or False: none is free; may raise an ApiError
OnPosition = Callable[[int], Awaitable[None]]


@dataclass(eq=False)
class _Waiter:
    client: str
    take: Take
    reports: bool  # it is told its place: wake it when the line moves
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    moved: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairQueue:
    def __init__(self, max_wait: float, max_per_client: int):
        self.max_wait = max_wait
        self.max_per_client = max_per_client
        self._ring: collections.OrderedDict[str, collections.deque[_Waiter]] = collections.OrderedDict()

    def __len__(self) -> int:
        return sum(len(line) for line in self._ring.values())

    async def wait(self, client: str, take: Take, full: Callable[[], ApiError], *,
                   on_position: OnPosition | None = None, undo: Callable[[], None] | None = None,
                   max_wait: float | None = None) -> None:
        """Return once ``take()`` succeeded (at once when nobody waits and it does); raise ``full()`` when the wait
        is not allowed or ``max_wait`` (default: the queue's) passes first. ``undo`` gives back what ``take`` took,
        should this task be cancelled after its turn came but before it could return."""
        if not self._ring and take():
            return
        max_wait = self.max_wait if max_wait is None else min(max_wait, self.max_wait)
        if max_wait <= 0 or len(self._ring.get(client, ())) >= self.max_per_client:
            raise full()
        waiter = _Waiter(client, take, on_position is not None)
        self._ring.setdefault(client, collections.deque()).append(waiter)
        self._moved()  # a newcomer may go ahead of a client's later waiters (round robin)
        try:
            self.serve()
            await self._wait_turn(waiter, full, on_position, max_wait)
        except BaseException:
            self._remove(waiter)
            if waiter.done.done() and not waiter.done.cancelled() and waiter.done.exception() is None and undo:
                undo()  # our turn came, but we leave: give the capacity back
            raise

    async def _wait_turn(self, waiter: _Waiter, full: Callable[[], ApiError], on_position: OnPosition | None,
                         max_wait: float):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        reported = None
        while not waiter.done.done():
            position = self.position(waiter)
            if on_position is not None and position != reported:
                reported = position
                await on_position(position)
                continue  # the line may have moved meanwhile
            left = deadline - loop.time()
            if left <= 0:
                raise full()
            await asyncio.wait((waiter.done, waiter.moved), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if waiter.moved.done():
                waiter.moved = loop.create_future()
        waiter.done.result()  # the take's error, if it raised one

    def position(self, waiter: _Waiter) -> int:
        """1 + how many waiters round robin serves before ``waiter``."""
        line = self._ring.get(waiter.client)
        if line is None or waiter not in line:
            return 0
        index = line.index(waiter)
        ahead = index
        before_us = True  # clients ahead of ours in the ring get one more turn in our round
        for client, other in self._ring.items():
            if client == waiter.client:
                before_us = False
                continue
            ahead += min(len(other), index) + (1 if before_us and len(other) > index else 0)
        return ahead + 1

    def serve(self) -> None:
        """Capacity may have been freed: hand it out in round-robin order while it lasts."""
        served = False
        while self._ring:
            client, line = next(iter(self._ring.items()))
            waiter = line[0]
            try:
                taken = waiter.take()
            except ApiError as e:  # this waiter may no longer take it (say its client's share is used up)
                waiter.done.set_exception(e)
                taken = None
            if taken is False:
                break
            if taken:
                waiter.done.set_result(None)
            line.popleft()
            self._ring.move_to_end(client)
            if not line:
                del self._ring[client]
            served = True
        if served:
            self._moved()

    def _remove(self, waiter: _Waiter) -> None:
        line = self._ring.get(waiter.client)
        if line is not None and waiter in line:
            line.remove(waiter)
            if not line:
                del self._ring[waiter.client]
            self._moved()

    def _moved(self) -> None:
        for line in self._ring.values():
            for waiter in line:
                if waiter.reports and not waiter.moved.done():
                    waiter.moved.set_result(None)


def suppressing(on_position: OnPosition | None) -> OnPosition | None:
    """``on_position`` whose failures (a client gone) never fail the wait itself."""
    if on_position is None:
        return None

    async def report(position: int) -> None:
        with contextlib.suppress(Exception):
            await on_position(position)

    return report
