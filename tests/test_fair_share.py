"""Fair shares of the session slots and the swarm's attention cache (issue 15): one client address cannot
reserve every token or hold many idle sessions, a socket session that never generates is reclaimed, and a
``/v1`` request without ``max_tokens`` reserves a sensible amount. In-process on the shared fake engine
(client addresses set per connection); the limiter's arithmetic also as a unit.
"""

from __future__ import annotations

import json

import pytest
from fake_engine import FakeEngine, in_process_app, run_in_app

from backend.errors import Busy
from backend.services.limits import SessionLimiter
from backend.services.planning import Budget

pytestmark = pytest.mark.timeout(60)

A, B = ("127.0.0.2", 40000), ("127.0.0.3", 40000)


def _limiter(app) -> SessionLimiter:
    return app.extensions["petals_chat"].service.limiter


async def _open(client, address, max_length: int):
    ws = client.websocket("/api/v2/generate", scope_base={"client": address})
    connection = await ws.__aenter__()
    await connection.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": max_length}))
    return ws, connection, json.loads(await connection.receive())


async def _close_all(sockets) -> None:
    for ws, _, _ in sockets:
        await ws.__aexit__(None, None, None)


def test_one_address_cannot_reserve_every_token(registry):
    app = in_process_app(FakeEngine(), registry, max_tokens_per_client=3000)

    async def scenario(client):
        sockets = [await _open(client, A, 2048), await _open(client, A, 2048), await _open(client, A, 512),
                   await _open(client, B, 2048)]
        try:
            return [reply for _, _, reply in sockets]
        finally:
            await _close_all(sockets)

    first, over, small, other = run_in_app(app, scenario)
    assert first == small == other == {"ok": True}
    assert over["ok"] is False and over["code"] == "busy" and "reserve 2048 tokens" in over["traceback"], over


def test_idle_sessions_per_address_are_capped_and_generating_ones_do_not_count(registry):
    app = in_process_app(FakeEngine(), registry, max_idle_sessions_per_client=2)

    async def scenario(client):
        sockets = [await _open(client, A, 64), await _open(client, A, 64)]
        third = await _open(client, A, 64)  # two idle already
        other = await _open(client, B, 64)  # another address is not affected
        http = await client.post("/api/v1/generate", json={"model": "tiny", "inputs": "x", "max_new_tokens": 1},
                                 scope_base={"client": A})  # one-shot HTTP sessions generate at once
        working = sockets[0][1]
        await working.send(json.dumps({"type": "generate", "inputs": "x", "max_new_tokens": 1,
                                       "stop_sequence": "z"}))
        first_token = json.loads(await working.receive())  # the session generates now: not idle
        fourth = await _open(client, A, 64)
        await _close_all([*sockets, third, other, fourth])
        return third[2], other[2], http.status_code, first_token, fourth[2]

    third, other, http_status, first_token, fourth = run_in_app(app, scenario)
    assert third["ok"] is False and third["code"] == "busy" and "2 idle sessions" in third["traceback"], third
    assert other == {"ok": True} and http_status != 429
    assert first_token["outputs"] == "a" and fourth == {"ok": True}


def test_a_session_that_never_generates_is_reclaimed(registry):
    app = in_process_app(FakeEngine(), registry, unused_session_timeout=0.2)

    async def scenario(client):
        ws, connection, opened = await _open(client, A, 64)
        held = _limiter(app).open
        frame = json.loads(await connection.receive())  # sent by the server when the session is reclaimed
        left = _limiter(app).open
        await ws.__aexit__(None, None, None)
        return opened, held, frame, left

    opened, held, frame, left = run_in_app(app, scenario)
    assert opened == {"ok": True} and held == 1
    assert frame["code"] == "idle_timeout" and "not used within 0.2 seconds" in frame["traceback"], frame
    assert left == 0


def test_v1_without_max_tokens_reserves_the_prompt_and_a_default(registry):
    engine = FakeEngine()
    reserved: list[int] = []
    open_session = engine.open_session

    async def recording(model_key, max_length):
        reserved.append(max_length)
        return await open_session(model_key, max_length)

    engine.open_session = recording
    # without prompt reuse: a kept session reserves room for the next turns too (test_units_prompt_cache.py)
    app = in_process_app(engine, registry, default_max_tokens=100, prompt_cache_sessions=0)

    async def scenario(client):
        await client.post("/v1/completions", json={"model": "tiny", "prompt": "hello"})
        await client.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 7})

    run_in_app(app, scenario)
    assert reserved == [5 + 100, 5 + 7]  # the fake counts one token per character
    assert Budget().completion_tokens(None, None, prompt_tokens=10, context=8192, param="max_tokens",
                                      prompt_param="prompt") == 1024  # not the whole context


def test_limiter_counts_return_to_zero():
    limiter = SessionLimiter(10, 10, max_tokens_per_client=100, max_idle_per_client=1)
    limiter.acquire("a", 60)
    with pytest.raises(Busy, match="idle"):
        limiter.acquire("a", 10)
    limiter.generating("a", True)
    limiter.acquire("a", 40)  # the first one generates: not idle
    with pytest.raises(Busy, match="reserve 100 tokens"):
        limiter.acquire("a", 1, idle=False)
    limiter.release("a", 60, idle=False)  # closed while generating
    limiter.release("a", 40)
    assert limiter.open == 0 and not limiter._per_client and not limiter._tokens and not limiter._idle
