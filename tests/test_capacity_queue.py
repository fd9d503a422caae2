"""Waiting in line for capacity (issue 15): with every session slot or generation slot taken, a request waits (round
robin across client addresses, ``queue_timeout`` at most) instead of failing, and succeeds once capacity frees; a
WebSocket session opened with ``queue_updates`` sees its place in line, others see no new frame. The queue as a unit;
the app in-process on the shared fake engine.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import apoll_until
from fake_engine import FakeEngine, in_process_app, run_in_app

from backend.engine.types import Chunk
from backend.errors import Busy, CacheFull
from backend.services.fair_queue import FairQueue

pytestmark = pytest.mark.timeout(60)

A, B, C = ("127.0.0.2", 40000), ("127.0.0.3", 40000), ("127.0.0.4", 40000)
OPEN = {"type": "open_inference_session", "model": "tiny", "max_length": 64}


class _Capacity:
    def __init__(self, free: int = 0):
        self.free = free
        self.taken: list[str] = []

    def taker(self, name: str):
        def take() -> bool:
            if self.free <= 0:
                return False
            self.free -= 1
            self.taken.append(name)
            return True
        return take


async def _settle() -> None:
    """Let every waiting task run until it waits again (yields to the loop, no wait for time)."""
    for _ in range(20):
        await asyncio.sleep(0)


def _full() -> Busy:
    return Busy("Server is busy: full")


def test_round_robin_order_and_positions():
    async def scenario():
        queue, capacity = FairQueue(10, 10), _Capacity()
        positions: dict[str, list[int]] = {}

        def waiter(client: str, name: str):
            async def report(position: int) -> None:
                positions.setdefault(name, []).append(position)
            return asyncio.ensure_future(queue.wait(client, capacity.taker(name), _full, on_position=report))

        tasks = []
        for client, name in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1")):
            tasks.append(waiter(client, name))
            await _settle()
        for _ in range(5):
            capacity.free += 1
            queue.serve()
            await _settle()
        await asyncio.gather(*tasks)
        return capacity.taken, positions, len(queue)

    taken, positions, left = asyncio.run(scenario())
    assert taken == ["a1", "b1", "c1", "a2", "a3"]  # one per client and round, not first come first served
    assert positions == {"a1": [1], "a2": [2, 3, 4, 3, 2, 1], "a3": [3, 4, 5, 4, 3, 2, 1], "b1": [2, 1],
                         "c1": [3, 2, 1]}  # a later client goes ahead of a's second and third
    assert left == 0


def test_wait_is_bounded_and_leaving_gives_back_what_was_taken():
    async def scenario():
        queue, capacity = FairQueue(0.2, 10), _Capacity()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Busy, match="full"):
            await queue.wait("a", capacity.taker("a1"), _full)
        waited = loop.time() - started
        undone: list[str] = []
        task = asyncio.ensure_future(queue.wait("a", capacity.taker("a2"), _full, undo=lambda: undone.append("a2")))
        await asyncio.sleep(0)
        capacity.free = 1
        queue.serve()  # a2's turn comes ...
        task.cancel()  # ... but it leaves before it could return
        with pytest.raises(asyncio.CancelledError):
            await task
        refused = FairQueue(0, 10)  # queue_timeout 0: no waiting at all
        with pytest.raises(Busy):
            await refused.wait("a", _Capacity().taker("x"), _full)
        return waited, undone, len(queue)

    waited, undone, left = asyncio.run(scenario())
    assert 0.15 < waited < 2
    assert undone == ["a2"] and left == 0


class SwarmEngine(FakeEngine):
    """Finite answers ('a', then the stop), or with inputs 'hold' an answer that goes on until its client leaves. With
    ``capacity``: a swarm with that many tokens of attention cache, which a session takes (its max_length) at its
    first step, CacheFull when that does not fit (as Petals servers refuse it), and gives back when closed."""

    def __init__(self, capacity: int | None = None):
        super().__init__()
        self.capacity = capacity
        self.holding: list = []
        self.refused = 0

    async def close_session(self, session):
        await super().close_session(session)
        if session in self.holding:
            self.holding.remove(session)

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        if self.capacity is not None and session not in self.holding:
            if sum(s.max_length for s in self.holding) + session.max_length > self.capacity:
                self.refused += 1
                raise CacheFull("The swarm is out of capacity: attention cache is full, retry later or ask for a "
                                "smaller max_length")
            self.holding.append(session)
        yield Chunk(text="a", tokens=1)
        if inputs == "hold":
            await asyncio.Event().wait()  # until the client leaves (cancelled)
        yield Chunk(text="", tokens=0, finish_reason="stop")


GENERATE = {"type": "generate", "inputs": "x", "max_new_tokens": 1, "stop_sequence": "z"}
HOLD = {**GENERATE, "inputs": "hold"}


async def _socket(client, address):
    ws = client.websocket("/api/v2/generate", scope_base={"client": address})
    return ws, await ws.__aenter__()


async def _receive(connection, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(connection.receive(), timeout))


async def _until_stop(connection, frames: list[dict]) -> list[dict]:
    while frames[-1].get("ok") and not frames[-1].get("stop"):
        frames.append(await _receive(connection))
    return frames


def _limiter(app):
    return app.extensions["petals_chat"].service.limiter


async def _holding(client, address, max_length: int = 64):
    """A client whose session generates without end (it holds its slot, its generation slot and its cache)."""
    ws, connection = await _socket(client, address)
    await connection.send(json.dumps({**OPEN, "max_length": max_length}))
    assert await _receive(connection) == {"ok": True}
    await connection.send(json.dumps(HOLD))
    assert (await _receive(connection))["outputs"] == "a"
    return ws


def test_a_session_waits_for_a_slot_and_only_a_client_that_asked_sees_its_place(registry):
    app = in_process_app(SwarmEngine(), registry, max_sessions=1, queue_timeout=20)

    async def scenario(client):
        ws_a = await _holding(client, A)
        ws_b, victim = await _socket(client, B)
        await victim.send(json.dumps({**OPEN, "queue_updates": True}))
        queued = await _receive(victim)  # at once: the only slot is taken
        ws_c, old = await _socket(client, C)
        await old.send(json.dumps(OPEN))  # an old client: waits too, and sees nothing until its answer
        await apoll_until(lambda: len(_limiter(app).session_queue) == 2, "both to wait")
        await ws_a.__aexit__(None, None, None)  # the attacker leaves: the victim is next
        opened = await _receive(victim)
        await victim.send(json.dumps(GENERATE))
        answer = await _until_stop(victim, [await _receive(victim)])
        await ws_b.__aexit__(None, None, None)
        old_frame = await _receive(old)
        await ws_c.__aexit__(None, None, None)
        return queued, opened, answer, old_frame

    queued, opened, answer, old_frame = run_in_app(app, scenario)
    assert queued == {"ok": True, "queued": True, "position": 1}
    assert opened == {"ok": True} and answer[0]["outputs"] == "a" and answer[-1]["stop"] is True
    assert old_frame == {"ok": True}  # no queued frame for a client that did not ask


def test_a_generation_waits_for_a_generation_slot(registry):
    app = in_process_app(SwarmEngine(), registry, max_concurrent_generations=1, queue_timeout=20)

    async def scenario(client):
        ws_b, victim = await _socket(client, B)
        await victim.send(json.dumps({**OPEN, "queue_updates": True}))
        opened = await _receive(victim)
        ws_a = await _holding(client, A)  # the only generation slot is the attacker's now
        await victim.send(json.dumps(GENERATE))
        queued = await _receive(victim)
        await ws_a.__aexit__(None, None, None)
        answer = await _until_stop(victim, [await _receive(victim)])
        await ws_b.__aexit__(None, None, None)
        return opened, queued, answer

    opened, queued, answer = run_in_app(app, scenario)
    assert opened == {"ok": True} and queued == {"ok": True, "queued": True, "position": 1}
    assert answer[0]["outputs"] == "a" and answer[-1]["stop"] is True


def test_when_the_wait_ends_without_capacity_the_error_is_the_usual_line(registry):
    app = in_process_app(SwarmEngine(), registry, max_sessions=1, queue_timeout=0.3)

    async def scenario(client):
        ws_a = await _holding(client, A)
        ws_b, victim = await _socket(client, B)
        await victim.send(json.dumps(OPEN))
        refused = await _receive(victim)
        http = await client.post("/api/v1/generate", json={"model": "tiny", "inputs": "x", "max_new_tokens": 1},
                                 scope_base={"client": C})
        await ws_a.__aexit__(None, None, None)
        await ws_b.__aexit__(None, None, None)
        return refused, http.status_code, await http.get_json()

    refused, status, body = run_in_app(app, scenario)
    assert refused["ok"] is False and refused["code"] == "busy", refused
    assert refused["traceback"] == "Server is busy: all 1 inference sessions are in use, retry later"
    assert status == 429 and body["code"] == "busy"


def _cache_scenario(app, victim_options: dict):
    async def scenario(client):
        ws_a = await _holding(client, A, max_length=80)  # it holds 80 of the swarm's 100 tokens
        ws_b, victim = await _socket(client, B)
        await victim.send(json.dumps({**OPEN, **victim_options}))
        opened = await _receive(victim)
        await victim.send(json.dumps(GENERATE))
        await apoll_until(lambda: len(_limiter(app).cache_queue) == 1, "the victim to wait for the cache")
        await ws_a.__aexit__(None, None, None)  # the attacker's session closes: its cache is freed
        answer = await _until_stop(victim, [await _receive(victim)])
        await ws_b.__aexit__(None, None, None)
        return opened, answer

    return scenario


def test_a_first_generation_waits_for_the_swarms_cache(registry):
    engine = SwarmEngine(capacity=100)
    app = in_process_app(engine, registry, queue_timeout=20)
    opened, answer = run_in_app(app, _cache_scenario(app, {"queue_updates": True}))
    assert opened == {"ok": True}
    assert answer[0] == {"ok": True, "queued": True, "position": 1}, answer
    assert [frame["outputs"] for frame in answer[1:]] == ["a", ""] and answer[-1]["stop"] is True
    assert engine.refused == 1 and engine.open_sessions == 0 and not engine.holding


def test_an_old_client_waits_for_the_cache_without_new_frames(registry):
    engine = SwarmEngine(capacity=100)
    app = in_process_app(engine, registry, queue_timeout=20)
    opened, answer = run_in_app(app, _cache_scenario(app, {}))
    assert [frame["outputs"] for frame in answer] == ["a", ""] and answer[-1]["stop"] is True


def test_when_the_cache_stays_full_the_error_is_cache_full_at_once(registry):
    engine = SwarmEngine(capacity=100)
    app = in_process_app(engine, registry, queue_timeout=0.3)

    async def scenario(client):
        ws_a = await _holding(client, A, max_length=80)
        ws_b, victim = await _socket(client, B)
        await victim.send(json.dumps(OPEN))
        await _receive(victim)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await victim.send(json.dumps(GENERATE))
        refused = await _receive(victim)
        waited = loop.time() - started
        await ws_a.__aexit__(None, None, None)
        await ws_b.__aexit__(None, None, None)
        return refused, waited

    refused, waited = run_in_app(app, scenario)
    assert refused["ok"] is False and refused["code"] == "cache_full", refused
    assert "attention cache is full" in refused["traceback"]
    assert 0.2 < waited < 5


@pytest.mark.parametrize("resumable", [False, True], ids=["plain", "resumable"])
def test_an_idle_session_yields_its_slot_to_a_waiting_client(registry, resumable):
    """Also a resumable one (the chat page opens those): it is closed, not kept for a reattach."""
    engine = SwarmEngine(capacity=100)
    app = in_process_app(engine, registry, max_sessions=2, queue_timeout=20)

    async def scenario(client):
        ws_b = await _holding(client, B, max_length=40)  # generating: never asked to yield
        ws_a, idle = await _socket(client, A)
        await idle.send(json.dumps({**OPEN, "max_length": 40, "resumable": resumable}))
        assert (await _receive(idle))["ok"] is True
        await idle.send(json.dumps(GENERATE))
        answered = await _until_stop(idle, [await _receive(idle)])  # answered: idle now, holding cache
        ws_c, newcomer = await _socket(client, C)
        await newcomer.send(json.dumps({**OPEN, "max_length": 40}))  # no slot left: the idle session yields
        told = await _receive(idle)
        admitted = await _receive(newcomer)
        await newcomer.send(json.dumps(GENERATE))  # and the cache it held is the newcomer's
        answer = await _until_stop(newcomer, [await _receive(newcomer)])
        for ws in (ws_a, ws_b, ws_c):
            await ws.__aexit__(None, None, None)
        return answered, told, admitted, answer

    answered, told, admitted, answer = run_in_app(app, scenario)
    assert answered[-1]["stop"] is True
    assert told["ok"] is False and told["code"] == "idle_timeout", told
    assert "idle while other users waited for capacity" in told["traceback"]
    assert admitted == {"ok": True} and answer[-1]["stop"] is True
    assert engine.open_sessions == 0
