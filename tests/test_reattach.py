"""Resumable WebSocket sessions: a generation outlives its socket and a new socket reattaches to it.

In-process (Quart's test client) on the shared fake engine, with a stream that yields ten tokens slowly.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fake_engine import FakeEngine, in_process_app, run_in_app

from backend.engine.types import Chunk

pytestmark = pytest.mark.timeout(60)

TOKENS = [f"t{i} " for i in range(10)]
ANSWER = "".join(TOKENS) + "###"


class SlowEngine(FakeEngine):
    """Streams TOKENS then the stop sequence '###', one token every ``pause`` seconds; counts what it streamed."""

    def __init__(self, pause: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.pause = pause
        self.streamed = 0
        self.cancelled = 0

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        try:
            for text in TOKENS:
                await asyncio.sleep(self.pause)
                self.streamed += 1
                yield Chunk(text=text, tokens=1)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        yield Chunk(text="###", tokens=1, finish_reason="stop", matched_stop="###")


OPEN = {"type": "open_inference_session", "model": "tiny", "max_length": 256, "resumable": True}
REPLAY = {"ok": True, "outputs": "", "stop": False, "token_count": 0, "replay": True}
GENERATE = {"type": "generate", "inputs": "hi", "max_new_tokens": 1, "stop_sequence": "###"}


async def _recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.receive(), 5))


async def _until(predicate, timeout: float = 5) -> None:
    """Poll ``predicate()`` until it holds (the state a step waits for, never a fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)  # polling pace


def _generating(app) -> bool:
    """Whether any of the app's resumable sessions is still generating."""
    return any(s.generating for s in app.extensions["petals_chat"].resumable._sessions.values())


async def _start_answer(ws) -> str:
    """Open a resumable session, start GENERATE and take its first frame; the resume token."""
    await ws.send(json.dumps(OPEN))
    token = (await _recv(ws))["resume_token"]
    await ws.send(json.dumps(GENERATE))
    await _recv(ws)
    return token


async def _until_stop(ws) -> list[dict]:
    frames = []
    while True:
        frames.append(await _recv(ws))
        if frames[-1].get("stop") or not frames[-1]["ok"]:
            return frames


def test_open_without_resumable_is_unchanged(registry):
    app = in_process_app(SlowEngine(pause=0), registry)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({**OPEN, "resumable": False}))
            ack = await _recv(ws)
            await ws.send(json.dumps(GENERATE))
            return ack, await _until_stop(ws)

    ack, frames = run_in_app(app, scenario)
    assert ack == {"ok": True}
    assert "".join(f["outputs"] for f in frames) == ANSWER
    facts = {"route", "context_tokens"}  # optional facts of a generation's first and last frames, resumable or not
    assert all(set(f) - facts == {"ok", "outputs", "stop", "token_count"} for f in frames)


def test_reattach_mid_answer_replays_what_was_missed_and_goes_on(registry):
    engine = SlowEngine()
    app = in_process_app(engine, registry)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps(OPEN))
            ack = await _recv(ws)
            await ws.send(json.dumps(GENERATE))
            first = [await _recv(ws) for _ in range(3)]
        # the socket is gone: the generation goes on
        await _until(lambda: engine.streamed >= 5)
        assert engine.cancelled == 0
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({"type": "reattach", "resume_token": ack["resume_token"]}))
            reattached = await _recv(ws)
            rest = await _until_stop(ws)
            # the session goes on: a next turn on the same socket
            await ws.send(json.dumps({**GENERATE, "inputs": "again"}))
            again = await _until_stop(ws)
        return ack, first, reattached, rest, again

    ack, first, reattached, rest, again = run_in_app(app, scenario)
    assert ack["ok"] and len(ack["resume_token"]) > 20
    assert "".join(f["outputs"] for f in first) == "".join(TOKENS[:3])
    assert reattached == {"ok": True, "resume_token": ack["resume_token"], "generating": True, "generations": 1}
    assert rest[0] == REPLAY  # then the whole answer again, round by round
    assert [f["outputs"] for f in rest[1:]] == [*TOKENS, "###"]
    assert sum(f["token_count"] for f in rest) == 11
    assert "".join(f["outputs"] for f in again) == ANSWER
    assert engine.cancelled == 0 and engine.open_sessions == 0  # closed when the app stopped


def test_reattach_after_the_answer_finished_gets_it_whole(registry):
    engine = SlowEngine(pause=0.01)
    app = in_process_app(engine, registry)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            token = await _start_answer(ws)
        await _until(lambda: not _generating(app))  # the generation ends while no socket is there
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({"type": "reattach", "resume_token": token}))
            return await _recv(ws), await _until_stop(ws)

    ack, frames = run_in_app(app, scenario)
    assert ack["generating"] is False and ack["generations"] == 1
    assert frames[0] == REPLAY
    assert "".join(f["outputs"] for f in frames) == ANSWER and frames[-1]["stop"] is True


def test_an_unknown_or_expired_token_is_an_error_and_the_session_is_closed(registry):
    engine = SlowEngine(pause=0.02)
    app = in_process_app(engine, registry, reattach_window=0.1)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({"type": "reattach", "resume_token": "nope"}))
            unknown = await _recv(ws)
            token = await _start_answer(ws)
        # past the window: the generation is cancelled, the session closed
        await _until(lambda: engine.cancelled == 1 and engine.open_sessions == 0)
        open_after = engine.open_sessions
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({"type": "reattach", "resume_token": token}))
            expired = await _recv(ws)
        return unknown, expired, open_after

    unknown, expired, open_after = run_in_app(app, scenario)
    for reply in (unknown, expired):
        assert reply["ok"] is False and reply["code"] == "session_expired"
        assert "Session expired" in reply["traceback"]
    assert open_after == 0 and engine.cancelled == 1 and engine.streamed < len(TOKENS)


def test_cancel_stops_the_generation_and_closes_the_session(registry):
    engine = SlowEngine()
    app = in_process_app(engine, registry)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            token = await _start_answer(ws)
            await ws.send(json.dumps({"type": "cancel"}))
            await _until(lambda: engine.open_sessions == 0)
        sessions = engine.open_sessions
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({"type": "reattach", "resume_token": token}))
            return sessions, await _recv(ws)

    sessions, reply = run_in_app(app, scenario)
    assert sessions == 0 and engine.cancelled == 1
    assert reply["code"] == "session_expired"


def test_a_second_socket_takes_the_session_over(registry):
    engine = SlowEngine()
    app = in_process_app(engine, registry)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as old:
            token = await _start_answer(old)
            async with client.websocket("/api/v2/generate") as new:  # the old socket is not gone yet
                await new.send(json.dumps({"type": "reattach", "resume_token": token}))
                await _recv(new)
                frames = await _until_stop(new)
            return frames

    frames = run_in_app(app, scenario)
    assert frames[0] == REPLAY
    assert "".join(f["outputs"] for f in frames) == ANSWER
    assert engine.cancelled == 0


def test_cancel_then_disconnect_at_once_closes_the_session_now(registry):
    """The page's Stop sends a cancel and closes its socket at once: the session must close now, not be kept for
    the reattach window (generating on, holding its generation slot), whichever the server notices first."""
    engine = SlowEngine(pause=0.05)
    app = in_process_app(engine, registry, reattach_window=600)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            token = await _start_answer(ws)
            await ws.send(json.dumps({"type": "cancel"}))
        await _until(lambda: engine.open_sessions == 0)
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({"type": "reattach", "resume_token": token}))
            return await _recv(ws)

    reply = run_in_app(app, scenario)
    assert reply["code"] == "session_expired"
    assert engine.cancelled == 1 and engine.streamed < len(TOKENS)


def test_closing_runs_to_its_end_when_its_caller_is_cancelled(registry):
    """A connection cancelled while it closes its resumable session (a disconnect right after a cancel) still
    leaves the session closed and its generation cancelled once: nothing keeps its slot."""
    engine = SlowEngine(pause=0.05)
    app = in_process_app(engine, registry, reattach_window=600)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            await _start_answer(ws)
            sessions = app.extensions["petals_chat"].resumable
            (held,) = sessions._sessions.values()
            closing = asyncio.ensure_future(sessions.close(held))
            await asyncio.sleep(0)  # let it start: cancel it mid-way
            closing.cancel()
            await _until(lambda: engine.open_sessions == 0)
            return held, closing

    held, closing = run_in_app(app, scenario)
    assert closing.cancelled() and held.conversation.closed
    assert engine.cancelled == 1
