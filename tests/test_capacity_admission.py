"""The swarm's attention cache under pressure (issue 15), on the shared fake engine: the prompt cache's kept sessions
yield first when a request waits for cache, and a session's first generation is admitted by the cache its servers
announce (it waits in line while sessions here could free what is missing, fails at once when nothing here could,
and goes ahead when the swarm does not say).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fake_engine import FakeEngine, in_process_app, run_in_app

from backend.engine.types import Chunk
from backend.errors import CacheFull
from backend.services.capacity import announced_room
from backend.services.swarm_view import SwarmView
from backend.services.yielding import IdleSessions

pytestmark = pytest.mark.timeout(60)

A, B, C = ("127.0.0.2", 40000), ("127.0.0.3", 40000), ("127.0.0.4", 40000)
OPEN = {"type": "open_inference_session", "model": "tiny", "max_length": 64}
ONE = {"type": "generate", "inputs": "x", "max_new_tokens": 1}  # one reply
HOLD = {"type": "generate", "inputs": "hold", "max_new_tokens": 1, "stop_sequence": "z"}  # answers until it leaves


class CacheSwarm(FakeEngine):
    """A swarm of two 2-block servers with ``capacity`` tokens of attention cache: a session takes its max_length at
    its first step (CacheFull when that does not fit, as Petals servers refuse it) and gives it back when closed;
    ``outside`` tokens are held by clients of other apps. Answers are 'x' tokens kept in the session's history (the
    prompt cache can continue them); inputs 'hold' answer until the client leaves. With ``announces``, swarm()
    tells the cache left (fresh); else what ``cache_tokens_left`` says."""

    def __init__(self, capacity: int, *, announces: bool = False, outside: int = 0):
        super().__init__()
        self.capacity, self.announces, self.outside = capacity, announces, outside
        self.holding: list = []
        self.refused = 0

    def left(self) -> int:
        return self.capacity - self.outside - sum(s.max_length for s in self.holding)

    async def swarm(self, model_key):
        if self.announces:
            self.cache_tokens_left = 2 * 2 * self.left()  # Petals' units: 2 x tokens x blocks
        return await super().swarm(model_key)

    async def close_session(self, session):
        await super().close_session(session)
        if session in self.holding:
            self.holding.remove(session)

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        if session not in self.holding:
            if session.max_length > self.left():
                self.refused += 1
                raise CacheFull("The swarm is out of capacity: attention cache is full, retry later")
            self.holding.append(session)
        session.ids += inputs if isinstance(inputs, list) else self.token_ids(session.model_key, inputs or "")
        for i in range(max_new_tokens):
            session.ids.append(ord("x"))
            session.length = len(session.ids)
            if inputs == "hold":
                yield Chunk(text="x", tokens=1)
                await asyncio.Event().wait()  # until the client leaves (cancelled)
            yield Chunk(text="x", tokens=1, finish_reason="length" if i == max_new_tokens - 1 else None)


async def _receive(connection, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(connection.receive(), timeout))


class Socket:
    def __init__(self, client, address):
        self._ws = client.websocket("/api/v2/generate", scope_base={"client": address})
        self.connection = None

    async def open(self, max_length: int, **options) -> dict:
        self.connection = await self._ws.__aenter__()
        return await self.ask({**OPEN, "max_length": max_length, **options})

    async def ask(self, request: dict) -> dict:
        await self.connection.send(json.dumps(request))
        return await _receive(self.connection)

    async def close(self) -> None:
        await self._ws.__aexit__(None, None, None)


def _state(app):
    return app.extensions["petals_chat"]


def _fresh_announcements(app) -> None:
    """The app reads the announcements anew for every first generation (it caches them 5 s)."""
    service = _state(app).service
    service.capacity.view = SwarmView(service.engine, ttl=0)


async def _complete(client, prompt: str, address=A) -> dict:
    response = await client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 3},
                                 scope_base={"client": address})
    return await response.get_json()


# ---- units -------------------------------------------------------------------------------------------------------

def test_kept_sessions_yield_cache_first_and_only_live_sessions_yield_slots():
    closed: list[str] = []
    idle = IdleSessions()
    idle.add("live-old", lambda: closed.append("live-old"))
    idle.add("kept-1", lambda: closed.append("kept-1"), kept_tokens=100)
    idle.add("kept-2", lambda: closed.append("kept-2"), kept_tokens=300)
    idle.add("live-new", lambda: closed.append("live-new"))
    idle.yield_cache(150)  # kept ones first, least recently kept first, until they free enough
    assert closed == ["kept-1", "kept-2"] and len(idle) == 2
    idle.add("kept-3", lambda: closed.append("kept-3"), kept_tokens=50)
    idle.yield_cache(200)  # they cannot free enough: the live session idle the longest yields too
    assert closed[2:] == ["kept-3", "live-old"]
    idle.add("kept-4", lambda: closed.append("kept-4"), kept_tokens=50)
    assert idle.yield_slot() and closed[4:] == ["live-new"]  # a kept session holds no session slot
    assert not idle.yield_slot() and len(idle) == 1


def _summary(*servers, blocks: int = 4) -> dict:
    return {"blocks_total": blocks, "servers": [
        {"state": state, "start": start, "end": end, "spans": [[start, end]], "cache_tokens_left": left}
        for start, end, left, state in servers]}


def test_announced_room_is_the_best_server_of_the_worst_block_in_petals_units():
    # a session of L tokens takes 2 * L * (the server's blocks) of its cache_tokens_left
    assert announced_room(_summary((0, 2, 400, "online"), (2, 4, 800, "online"))) == 100
    assert announced_room(_summary((0, 4, 800, "online"), (0, 2, 4000, "online"), (2, 4, 40, "online"))) == 100
    assert announced_room(_summary((0, 2, 400, "online"), (2, 4, 0, "online"), (2, 4, 9999, "joining"))) == 0
    assert announced_room(_summary((0, 2, 400, "online"), (2, 4, None, "online"))) is None  # not announced
    assert announced_room(_summary((0, 2, 400, "online"))) is None  # blocks 2-3 not served: not a cache question
    assert announced_room(_summary(blocks=0)) is None


# ---- kept sessions yield -------------------------------------------------------------------------------------------

def test_a_request_waiting_for_cache_closes_kept_sessions_before_a_live_idle_one(registry):
    engine = CacheSwarm(capacity=1000)  # no announcements: the request finds the cache full, then waits
    app = in_process_app(engine, registry, queue_timeout=20)

    async def scenario(client):
        live = Socket(client, B)
        assert await live.open(100) == {"ok": True}
        assert (await live.ask(ONE))["stop"] is True  # idle now, holding 100 tokens of cache
        answer = await _complete(client, "One")  # its session (518 tokens) is kept for the next turn
        assert answer["choices"][0]["text"] == "xxx" and len(_state(app).prompt_cache) == 1
        victim = Socket(client, C)
        assert await victim.open(400, queue_updates=True) == {"ok": True}
        await victim.connection.send(json.dumps(ONE))  # 100 + 518 + 400 > 1000: it waits, the kept session yields
        frames = [await _receive(victim.connection)]
        while "outputs" not in frames[-1]:
            frames.append(await _receive(victim.connection))
        again = await live.ask(ONE)  # the live idle session was left alone
        for socket in (live, victim):
            await socket.close()
        return frames, again, len(_state(app).prompt_cache)

    frames, again, kept = run_in_app(app, scenario)
    assert frames[0] == {"ok": True, "queued": True, "position": 1}, frames
    assert frames[-1]["outputs"] == "x" and frames[-1]["stop"] is True
    assert again["outputs"] == "x", again
    assert kept == 0 and engine.refused == 1 and engine.open_sessions == 0


# ---- admission by announced capacity -------------------------------------------------------------------------------

async def _holding(client, address, max_length: int) -> Socket:
    socket = Socket(client, address)
    assert await socket.open(max_length) == {"ok": True}
    await socket.connection.send(json.dumps(HOLD))
    assert (await _receive(socket.connection))["outputs"] == "x"
    return socket


def test_a_first_generation_waits_in_line_when_the_servers_announce_no_room_then_succeeds(registry):
    engine = CacheSwarm(capacity=100, announces=True)
    app = in_process_app(engine, registry, queue_timeout=20)

    async def scenario(client):
        _fresh_announcements(app)
        attacker = await _holding(client, A, 80)
        victim = Socket(client, B)
        assert await victim.open(64, queue_updates=True) == {"ok": True}
        queued = await victim.ask(ONE)  # announced: room for 20 -> it waits, without trying the swarm
        waiting = len(_state(app).service.limiter.cache_queue)
        await attacker.close()
        answer = await _receive(victim.connection)
        await victim.close()
        return queued, waiting, answer

    queued, waiting, answer = run_in_app(app, scenario)
    assert queued == {"ok": True, "queued": True, "position": 1} and waiting == 1
    assert answer["outputs"] == "x" and answer["stop"] is True
    assert engine.refused == 0  # it never reserved before the cache was free (no allocation timeout to sit out)


def test_when_nothing_here_could_free_enough_it_fails_at_once_with_cache_full(registry):
    engine = CacheSwarm(capacity=100, announces=True, outside=90)  # other apps' clients hold 90 tokens
    app = in_process_app(engine, registry, queue_timeout=20)

    async def scenario(client):
        _fresh_announcements(app)
        victim = Socket(client, B)
        assert await victim.open(64, queue_updates=True) == {"ok": True}
        loop = asyncio.get_running_loop()
        started = loop.time()
        refused = await victim.ask(ONE)
        waited = loop.time() - started
        http = await client.post("/api/v1/generate", json={"model": "tiny", "inputs": "x", "max_length": 64},
                                 scope_base={"client": C})
        await victim.close()
        return refused, waited, http.status_code, await http.get_json()

    refused, waited, status, body = run_in_app(app, scenario)
    assert refused["ok"] is False and refused["code"] == "cache_full", refused
    assert "attention cache is full" in refused["traceback"] and "room for 10 more tokens" in refused["traceback"]
    assert waited < 2  # not queue_timeout (20 s), nor an allocation timeout
    assert status == 503 and body["code"] == "cache_full", body
    assert engine.refused == 0, (refused, body)


def test_no_announcement_never_refuses_and_cache_freed_here_lately_counts_as_free(registry):
    engine = CacheSwarm(capacity=100, outside=90)
    engine.cache_tokens_left = None  # the servers do not say
    app = in_process_app(engine, registry, queue_timeout=0.3)

    async def scenario(client):
        first = Socket(client, A)
        assert await first.open(64) == {"ok": True}
        tried = await first.ask(ONE)  # no hint: it goes ahead, and the swarm's own CacheFull path answers
        await first.close()
        engine.outside = 0
        used = Socket(client, C)
        assert await used.open(64) == {"ok": True}
        assert (await used.ask(ONE))["outputs"] == "x"  # it holds 64 tokens in the swarm ...
        await used.close()  # ... and frees them
        engine.cache_tokens_left = 0  # a stale announcement: full, from before this app's session closed
        mine = Socket(client, B)
        assert await mine.open(64) == {"ok": True}
        answered = await mine.ask(ONE)  # 64 tokens freed here within a minute: the announcement predates it
        await mine.close()
        return tried, answered

    tried, answered = run_in_app(app, scenario)
    assert tried["code"] == "cache_full" and engine.refused == 1, tried
    assert answered["outputs"] == "x", answered
