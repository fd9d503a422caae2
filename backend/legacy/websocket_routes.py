"""WebSocket API ``/api/v2/generate`` (chat.petals.dev compatible).

One connection holds at most one inference session. Every request gets an
answer; a bad request gets ``{"ok": false, "traceback": ONE_LINE, "code": CODE}`` and the
connection stays usable. The session is closed when the connection ends,
gracefully or not (Quart cancels this handler on disconnect).

Bounds, so that no client can hold the server's memory or a session forever:
requests are read by a pump into a small inbox (a client that sends more than
``max_queued_requests`` ahead while a generation runs is disconnected); a reply
that a client does not read within ``send_timeout`` drops the connection; a
connection is closed after ``step_timeout`` idle seconds and after
``max_session_seconds`` in all; a session that never generates is closed ``unused_session_timeout``
seconds after it opened (it holds a slot and the swarm's cache). On shutdown, idle sockets are told at once and
generating ones when their generation ends.

A session opened with ``"resumable": true`` outlives its socket for ``reattach_window`` seconds
(:mod:`.resumable`): its generations run in a task of their own, and a new socket takes
it over with ``{"type": "reattach", "resume_token": ...}``; ``{"type": "cancel"}`` stops and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from quart import Blueprint, websocket

from .. import slow_readers
from ..errors import ApiError, BadRequest, SessionExpired
from ..routes import json_body
from ..routes.common import client_address, is_own_origin, service, state
from ..services import fair_queue
from ..services.generation import Conversation, GenerateSpec, Round
from ..services.planning import StopRules
from ..services.shutdown import SHUTDOWN, SHUTTING_DOWN
from ..validation import parse
from . import errors, schemas
from .resumable import Resumable

logger = logging.getLogger(__name__)
blueprint = Blueprint("websocket_api", __name__)

_WAKE = object()  # put by the pump after it stopped reading (self.flood says why)
_YIELD = object()  # put by the limiter: this idle session must give its slot to a client waiting for one


class _Drop(Exception):
    """End the connection now (after telling the client, when that is still possible).

    ``code`` is the WebSocket close code, ``reason`` the error frame's legacy ``code``.
    """

    def __init__(self, message: str | None, code: int = 1000, *, reason: str = "closed"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason


def _decode(raw: str | bytes | None) -> dict:
    if not isinstance(raw, str):
        raise BadRequest("binary frames are not supported: send JSON text frames")
    data = json_body.decode(raw)
    if not isinstance(data, dict):
        raise BadRequest("request must be a JSON object")
    return data


def _is_cancel(raw) -> bool:
    """Whether a frame is a cancel request (read by the pump while a generation runs)."""
    if not isinstance(raw, str) or len(raw) > 200 or "cancel" not in raw:
        return False
    with contextlib.suppress(Exception):
        data = json.loads(raw)
        return isinstance(data, dict) and data.get("type") == "cancel"
    return False


def _short(value, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: errors never echo a client's long input back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Connection:
    def __init__(self) -> None:
        self.app_state = state()
        self.settings = self.app_state.settings
        self.shutdown = self.app_state.shutdown
        self.client = client_address(websocket)
        self.own_origin = is_own_origin(websocket)
        self.conversation: Conversation | None = None
        self.resumable: Resumable | None = None  # self.conversation's holder, when it was opened resumable
        self.cancelled = False  # a cancel request arrived
        self.queue_updates = False  # the session was opened with queue_updates: send queued frames
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.flood: _Drop | None = None  # set by the pump: why the connection must end now
        self.generation_timeout: asyncio.Timeout | None = None
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.settings.max_session_seconds
        self.unused_deadline = self.deadline  # set when a session opens: it must generate before then
        # what this server buffers for a client that does not read is bounded; a send waits send_timeout at most
        self.bound = slow_readers.limit(websocket.scope, self.settings.max_unread_bytes)

    async def send(self, payload: dict) -> None:
        """Send one reply; a client that does not read it in time is dropped."""
        try:
            # not wait_for: on Python 3.11 it loses a cancellation (the client went away) that arrives as the send
            # completes, and the handler would then wait for requests on a dead socket
            async with asyncio.timeout(self.settings.send_timeout):
                await websocket.send(json.dumps(payload, ensure_ascii=False))
        except TimeoutError:
            logger.info("ws client dropped: a reply was not read within %g seconds", self.settings.send_timeout)
            raise _Drop(None, 1008) from None

    async def pump(self) -> None:
        """Read frames into the inbox; on a flood or an oversized message, stop reading and end the connection."""
        settings = self.settings
        while True:
            raw = await websocket.receive()
            size = len(raw) if raw is not None else 0
            if size > settings.max_ws_message_bytes:
                self.flood = _Drop(f"Message too large: {size} characters, limit {settings.max_ws_message_bytes} "
                                   "bytes", 1009, reason="too_large")
            elif self.inbox.qsize() >= settings.max_queued_requests:
                self.flood = _Drop(f"Too many requests: at most {settings.max_queued_requests} may wait while a "
                                   "generation runs; closing the connection", 1008, reason="too_many_requests")
            else:
                self.inbox.put_nowait(raw)
                if _is_cancel(raw):
                    self.cancelled = True  # also when the client disconnects before the cancel is handled
                    if self.generation_timeout is not None:
                        self.generation_timeout.reschedule(asyncio.get_running_loop().time())
                continue
            if self.generation_timeout is not None:  # stop the running generation now
                self.generation_timeout.reschedule(asyncio.get_running_loop().time())
            self.inbox.put_nowait(_WAKE)
            return

    async def run(self) -> None:
        pump = asyncio.ensure_future(self.pump())
        if self.shutdown is not None:
            self.shutdown.inboxes.add(self.inbox)
        try:
            while True:
                raw = await self.next_request()
                await self.handle(raw)
        except _Drop as drop:
            await self.close_conversation()  # first: the client may never read again
            if drop.message:
                with contextlib.suppress(_Drop):
                    await self.send(schemas.error(drop.message, drop.reason))
            try:
                await asyncio.wait_for(websocket.close(drop.code, (drop.message or "")[:100]), 2)
            except TimeoutError:
                self.bound.abort()  # the client does not read, not even the close frame: drop what it was sent
        finally:
            pump.cancel()
            if self.shutdown is not None:
                self.shutdown.inboxes.discard(self.inbox)
            if self.resumable is not None and self.resumable.conversation is self.conversation:
                # kept for a reattach, unless the client asked to cancel it (then disconnected before we saw it)
                self.app_state.resumable.detach(self.resumable, self, keep=not self.cancelled)
            elif self.conversation is not None:
                await self.conversation.close()

    async def next_request(self):
        settings = self.settings
        loop = asyncio.get_running_loop()
        left = self.deadline - loop.time()
        unused = self.unused_deadline - loop.time() if self.conversation and not self.conversation.used else None
        # while it waits for a request, the session is idle: the limiter may have it yield its slot (under pressure);
        # a resumable one too (the chat page's): it is closed then, not kept for a reattach
        limiter = self.app_state.service.limiter if self.conversation else None
        if limiter is not None:
            limiter.idle(self, lambda: self.inbox.put_nowait(_YIELD))
        try:
            wait = min(settings.step_timeout, left, unused if unused is not None else left)
            async with asyncio.timeout(max(0.0, wait)):  # not wait_for: it may lose a cancellation on 3.11
                raw = await self.inbox.get()
        except TimeoutError:
            if unused is not None and unused <= min(settings.step_timeout, left):
                raise _Drop(f"Session closed: the inference session was not used within "
                            f"{settings.unused_session_timeout:g} seconds of opening (it holds server capacity); "
                            "open one when you need it", reason="idle_timeout") from None
            if left <= settings.step_timeout:
                raise self._time_limit() from None
            raise _Drop(f"Session closed: no request for {settings.step_timeout:g} seconds",
                        reason="idle_timeout") from None
        finally:
            if limiter is not None:
                limiter.not_idle(self)
        if raw is _YIELD:
            raise _Drop("Session closed: it was idle while other users waited for capacity (a session slot or "
                        "attention cache; the server is full); open a new one when you need it", reason="idle_timeout")
        if self.flood is not None:
            raise self.flood
        if raw is SHUTDOWN or (self.shutdown is not None and self.shutdown.started.is_set()):
            raise _Drop(f"{SHUTTING_DOWN}: reconnect in a moment", 1001, reason="shutting_down")
        return raw

    def _time_limit(self) -> _Drop:
        return _Drop(f"Session closed: the connection reached its time limit of {self.settings.max_session_seconds:g} "
                     "seconds", reason="time_limit")

    async def handle(self, raw) -> None:
        settings = self.settings
        if self.resumable is not None and self.resumable.owner is not self:
            raise _Drop("Session taken over by another connection (reattach)")
        try:
            request = _decode(raw)
            kind = request.get("type")
            if kind == "open_inference_session":
                await self.open(request)
            elif kind == "generate":
                await self.generate(request)
            elif kind == "reattach":
                await self.reattach(request)
            elif kind == "cancel":
                parse(schemas.CancelRequest, request)
                raise _Drop(None)
            else:
                expected = "'generate'" if self.conversation else "'open_inference_session'"
                raise BadRequest(f"unknown request type {_short(kind)}: expected {expected}")
        except ApiError as e:
            if e.closes_session and await self.close_conversation():  # its state is unknown now
                e.message += " (the inference session was closed; open a new one)"
            await self.send(errors.frame(e, debug=settings.debug))
        except (_Drop, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug: log it, answer in one line, keep the connection
            await self.close_conversation()
            await self.send(errors.internal_frame(e, debug=settings.debug))

    async def close_conversation(self) -> bool:
        if self.conversation is None:
            return False
        old, self.conversation = self.conversation, None
        resumable, self.resumable = self.resumable, None
        if resumable is None:
            await old.close()
        elif resumable.owner is self:  # else another connection has taken it over: not ours to close
            await self.app_state.resumable.close(resumable)
        return True

    async def open(self, request: dict) -> None:
        req = parse(schemas.OpenSessionRequest, request)
        generation = service()
        spec = generation.resolve_model(req.model, own_origin=self.own_origin)
        await self.close_conversation()  # a new session replaces the old one
        self.queue_updates = req.queue_updates
        self.conversation = await generation.open(spec, req.max_length, self.client, on_queue=self._on_queue())
        self.unused_deadline = asyncio.get_running_loop().time() + self.settings.unused_session_timeout
        logger.info("ws session opened: model=%s max_length=%d", spec.key, req.max_length)
        if req.resumable and self.app_state.resumable is not None:
            self.resumable = self.app_state.resumable.add(self.conversation, self, self.deadline)
            await self.send(schemas.ok(resume_token=self.resumable.token))
        else:
            await self.send(schemas.ok())

    async def reattach(self, request: dict) -> None:
        """Take over a resumable session: the latest generation so far in one frame, then the rest as it comes."""
        req = parse(schemas.ReattachRequest, request)
        sessions = self.app_state.resumable
        held = sessions.attach(req.resume_token, self) if sessions is not None else None
        if held is None:
            raise SessionExpired("Session expired: the resume_token is unknown or its reattach window has passed; "
                                 "open a new session")
        if held is not self.resumable:
            await self.close_conversation()
        self.conversation, self.resumable = held.conversation, held
        self.deadline = held.deadline
        logger.info("ws session reattached (generating: %s)", held.generating)
        await self.send(schemas.ok(resume_token=held.token, generating=held.generating,
                                   generations=held.generations))
        if held.generations:
            # the latest generation again from its start, round by round, the first marked: the client resets
            await self.send(schemas.delta("", stop=False, token_count=0, replay=True))
            await self.forward(held.follow())

    async def generate(self, request: dict) -> None:
        if self.conversation is None:
            raise BadRequest("the first request must be of type 'open_inference_session'")
        req = parse(schemas.GenerateRequest, request)
        stops = StopRules(stop_sequence=req.stop_sequence, extra=tuple(req.extra_stop_sequences or ()),
                          until_stop=True)
        spec = GenerateSpec(inputs=req.inputs, max_new_tokens=req.max_new_tokens, max_length=req.max_length,
                            sampling=req.sampling(), stops=stops, on_queue=self._on_queue())
        rounds = self.conversation.generate(spec)
        if self.resumable is not None:
            self.resumable.start(rounds)  # runs on when this socket goes away
            rounds = self.resumable.follow()
        await self.forward(rounds)

    def _on_queue(self) -> fair_queue.OnPosition | None:
        """For a session opened with ``queue_updates``: a request waiting in line sends its place (an extension:
        other clients see no new frame). Never fails the wait (a resumable session's may run without a socket)."""
        if not self.queue_updates:
            return None

        async def report(position: int) -> None:
            await self.send(schemas.queued(position))

        return fair_queue.suppressing(report)

    async def forward(self, rounds: AsyncIterator[Round]) -> None:
        """Send a generation's rounds, within the connection's time limit (and the shutdown's)."""
        deadline = self.deadline
        shutdown = self.shutdown
        if shutdown is not None and shutdown.deadline is not None:
            deadline = min(deadline, shutdown.deadline)
        try:
            # closed on the way out, also when a send fails or the time runs out while the generation is
            # suspended at a round: else its cleanup (the generation slot, the stop rules) waits for the GC
            async with contextlib.aclosing(rounds), asyncio.timeout_at(deadline) as timeout:
                self.generation_timeout = timeout
                if shutdown is not None:
                    shutdown.timeouts.add(timeout)
                try:
                    async for round_ in rounds:
                        if self.resumable is not None and self.resumable.owner is not self:
                            raise _Drop("Session taken over by another connection (reattach)")
                        await self.send(schemas.delta(round_.outputs, stop=round_.stop,
                                                      token_count=round_.token_count, **round_.facts()))
                finally:
                    self.generation_timeout = None
                    if shutdown is not None:
                        shutdown.timeouts.discard(timeout)
        except TimeoutError:
            if self.cancelled:
                raise _Drop(None) from None
            if self.flood is not None:
                raise self.flood from None
            if shutdown is not None and shutdown.started.is_set():
                raise _Drop(f"{SHUTTING_DOWN}: the generation was stopped; reconnect in a moment", 1001,
                            reason="shutting_down") from None
            raise self._time_limit() from None


@blueprint.websocket("/api/v2/generate")
async def generate_ws() -> None:
    app_state = state()
    await websocket.accept()
    app_state.metrics.requests.labels("/api/v2/generate", "101").inc()
    await _Connection().run()
