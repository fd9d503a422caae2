"""Graceful shutdown: notice that the server begins to stop, so open sockets can be told.

Hypercorn, on SIGTERM/SIGINT, stops accepting connections and waits up to its
``graceful_timeout`` for the open ones to end, then cancels them. Idle
WebSockets would just hang until then and be cut. :class:`ShutdownWatch`
learns that the shutdown began and lets every socket answer
``{"ok": false, "traceback": "Server is shutting down ..."}``: idle ones at
once, generating ones when their generation ends (or when the grace period is
almost over).

Hypercorn closes every WebSocket as soon as its shutdown starts (its
``graceful_timeout`` covers HTTP requests only), so the watch also holds
Hypercorn's shutdown back until running generations have ended, at most
``graceful_timeout`` seconds.

How it learns: a single Hypercorn process (``python -m backend``, or
``hypercorn`` with ``workers = 0``) handles the signals on its event loop: the
watch wraps those handlers, and calls Hypercorn's once the generations are
done. A worker of a multi-process Hypercorn gets no signal; its parent sets a
shared event that the worker polls: :func:`hold_hypercorn_workers` (called when
``backend.asgi`` is imported, before Hypercorn builds that poll) makes the poll
wait for the watch too.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from typing import Any

logger = logging.getLogger("backend")

SHUTTING_DOWN = "Server is shutting down"
SHUTDOWN = object()  # put into every registered inbox when the shutdown begins
_WATCHES: list[ShutdownWatch] = []  # installed in this process (one per serving app)


class ShutdownWatch:
    def __init__(self, graceful_timeout: float):
        self.graceful_timeout = graceful_timeout
        self.started = asyncio.Event()
        self.deadline: float | None = None  # loop time when running generations are stopped
        self.inboxes: set[asyncio.Queue] = set()
        self.timeouts: set[asyncio.Timeout] = set()
        self._poller: asyncio.Task | None = None
        self._finisher: asyncio.Task | None = None

    # -- who learns about it ---------------------------------------------------
    def install(self) -> None:
        """Call once on the serving event loop (``before_serving``)."""
        loop = asyncio.get_running_loop()
        handlers: dict[int, Any] = getattr(loop, "_signal_handlers", {}) or {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = handlers.get(sig)
            if previous is None:  # not ours to take over: the default action stays
                continue
            loop.add_signal_handler(sig, self._chain, previous)
        _WATCHES.append(self)
        event = _multiprocess_shutdown_event()
        if event is not None:
            self._poller = loop.create_task(self._poll(event))

    def _chain(self, previous: asyncio.Handle) -> None:
        self.begin()

        async def then_hypercorn() -> None:
            await self.drained()
            previous._run()  # Hypercorn's own handler: starts its shutdown

        self._finisher = asyncio.get_running_loop().create_task(then_hypercorn())

    async def drained(self) -> None:
        """Until no generation runs (or the grace period is over), then a moment for the last replies."""
        loop = asyncio.get_running_loop()
        while self.timeouts and self.deadline is not None and loop.time() < self.deadline + 0.5:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)

    async def _poll(self, event) -> None:
        while not event.is_set():
            await asyncio.sleep(0.1)
        self.begin()

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self in _WATCHES:
            _WATCHES.remove(self)

    # -- what it does --------------------------------------------------------------
    def begin(self) -> None:
        if self.started.is_set():
            return
        loop = asyncio.get_running_loop()
        # stop running generations a little before Hypercorn cuts the connections, so they can be told
        self.deadline = loop.time() + max(0.0, self.graceful_timeout - 1.0)
        logger.info("shutting down: telling %d open socket(s); running generations get %.0f s",
                    len(self.inboxes), self.graceful_timeout)
        self.started.set()
        for inbox in self.inboxes:
            inbox.put_nowait(SHUTDOWN)
        for timeout in self.timeouts:
            when = timeout.when()
            if when is None or when > self.deadline:
                timeout.reschedule(self.deadline)


def _multiprocess_shutdown_event():
    """The event a multi-worker Hypercorn parent sets on shutdown, when this process is such a worker."""
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    event = kwargs.get("shutdown_event")
    return event if hasattr(event, "is_set") else None


def hold_hypercorn_workers() -> None:
    """Make a multi-worker Hypercorn's shutdown poll wait for this process's watches (see the module doc)."""
    try:
        import hypercorn.asyncio.run as hypercorn_run
    except ImportError:  # pragma: no cover - another server
        return
    original = hypercorn_run.check_multiprocess_shutdown_event
    if getattr(original, "holds_petals_chat", False):
        return

    async def check_multiprocess_shutdown_event(shutdown_event, sleep) -> None:
        await original(shutdown_event, sleep)
        for watch in list(_WATCHES):
            watch.begin()
            await watch.drained()

    check_multiprocess_shutdown_event.holds_petals_chat = True
    hypercorn_run.check_multiprocess_shutdown_event = check_multiprocess_shutdown_event
