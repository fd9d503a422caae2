"""Sessions that outlive their WebSocket for a reattach window (``reattach_window`` seconds).

A client that opens its session with ``"resumable": true`` gets a ``resume_token``. The session's
generations then run in a task of their own (:class:`Resumable`), which records every round; the
socket only forwards them. When the socket goes away, the task goes on and the session is kept for
the window; a new socket that sends ``{"type": "reattach", "resume_token": ...}`` takes it over,
receives the latest generation again from its start (the rounds so far at once, then the rest as they
come). Without a
reattach in time, the generation is cancelled and the session closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from ..services.generation import Conversation, Round

logger = logging.getLogger(__name__)


class Resumable:
    """A conversation whose generations run in a task of their own and are recorded round by round."""

    def __init__(self, conversation: Conversation, token: str, deadline: float):
        self.conversation = conversation
        self.token = token
        self.deadline = deadline  # loop time: the first connection's max_session_seconds, kept across reattaches
        self.rounds: list[Round] = []  # the latest generation's rounds so far
        self.error: BaseException | None = None  # what ended the latest generation, if not its last round
        self.finished = True
        self.generations = 0  # generate requests started in this session (a reattach tells the client)
        self.owner: object | None = None  # the connection forwarding the rounds now (None: detached)
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future | None = None  # ResumableSessions.close's work, once it started

    @property
    def generating(self) -> bool:
        return not self.finished

    def start(self, rounds: AsyncIterator[Round]) -> None:
        """Run one generation in the background, recording its rounds."""
        self.rounds, self.error, self.finished = [], None, False
        self.generations += 1
        self._task = asyncio.ensure_future(self._record(rounds))

    async def _record(self, rounds: AsyncIterator[Round]) -> None:
        try:
            async with contextlib.aclosing(rounds):
                async for round_ in rounds:
                    self.rounds.append(round_)
                    self._wake()
        except asyncio.CancelledError:
            self.error = asyncio.CancelledError()
            raise
        except BaseException as e:  # handed to the forwarding connection, which answers with an error frame
            self.error = e
        finally:
            self.finished = True
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, start: int = 0) -> AsyncIterator[Round]:
        """The latest generation's rounds from index ``start``, as they come; raises what ended it."""
        index = start
        while True:
            changed = self._changed
            while index < len(self.rounds):
                index += 1
                yield self.rounds[index - 1]
            if self.finished:
                if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
                    raise self.error
                return
            await changed.wait()

    async def cancel(self) -> None:
        """Stop the running generation (if any) and wait until it has stopped (a caller cancelled meanwhile
        leaves at once; the generation is cancelled once, never twice: its cleanup must run to its end)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})  # unlike ``await task``, never passes the caller's cancellation on to it


class ResumableSessions:
    """The resumable sessions of one app, by token; detached ones expire after ``window`` seconds."""

    def __init__(self, window: float):
        self.window = window
        self._sessions: dict[str, Resumable] = {}
        self._closing: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, conversation: Conversation, owner: object, deadline: float) -> Resumable:
        token = secrets.token_urlsafe(24)
        session = Resumable(conversation, token, deadline)
        session.owner = owner
        self._sessions[token] = session
        return session

    def attach(self, token: str, owner: object) -> Resumable | None:
        """Hand the session to a new connection (taking it from a connection that may not know yet it is dead)."""
        session = self._sessions.get(token)
        if session is None or session.conversation.closed:
            return None
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        session.owner = owner
        return session

    def detach(self, session: Resumable, owner: object, *, keep: bool = True) -> None:
        """The connection ``owner`` has ended: keep the session for the window (unless another took it);
        ``keep=False`` (its client asked to cancel it): close it now."""
        if session.owner is not owner or session.token not in self._sessions:
            return
        session.owner = None
        if self.window <= 0 or not keep:
            self._close_later(session)
            return
        logger.info("ws session detached: kept %g s for a reattach", self.window)
        session._expiry = asyncio.get_running_loop().call_later(self.window, self._close_later, session)

    def _close_later(self, session: Resumable) -> None:
        if session.owner is None:
            self._start_closing(session)

    async def close(self, session: Resumable) -> None:
        """Cancel its generation and close its session; its token is no longer valid. The closing runs to its
        end even when the caller is cancelled meanwhile (a client that sends a cancel and disconnects at once):
        else nobody would release the session's slot."""
        await asyncio.shield(self._start_closing(session))

    def _start_closing(self, session: Resumable) -> asyncio.Future:
        """Forget the session's token and start closing it (once): the closing's task, tracked for close_all."""
        self._sessions.pop(session.token, None)
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        if session._closing is None:
            session._closing = asyncio.ensure_future(self._finish(session))
            self._closing.add(session._closing)
            session._closing.add_done_callback(self._closing.discard)
        return session._closing

    @staticmethod
    async def _finish(session: Resumable) -> None:
        await session.cancel()
        await session.conversation.close()

    async def close_all(self) -> None:
        for session in list(self._sessions.values()):
            await self.close(session)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
