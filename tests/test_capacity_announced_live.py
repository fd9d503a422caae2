"""Admission by the swarm's announced cache, live (issue 15): a tiny swarm whose one server has room for 1024 tokens
and re-announces every 2 s. An idle attacker's session reserves 800 of them; a victim's first generation then
waits in line (its place shown) before it tries the swarm at all, the idle attacker yields its cache, and the
victim is answered, with no allocation timeout sat out.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from reliability_helpers import ask, backend, backend_env, connect

pytestmark = pytest.mark.timeout(300)

CACHE_TOKENS = 1024  # the server's attention cache: room for one session of up to this max_length


@pytest.fixture(scope="module")
def small_swarm(tiny_model, tmp_path_factory):
    from backend.swarm.launcher import LocalSwarm

    swarm = LocalSwarm(tiny_model, dht_prefix="tiny-test", servers=1,
                       extra_args=["--attn_cache_tokens", str(CACHE_TOKENS), "--update_period", "2"],
                       log_file=tmp_path_factory.mktemp("small-swarm") / "swarm.log")
    swarm.start(timeout=120)
    yield swarm
    swarm.stop(grace=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_swarm, test_registry):
    env = backend_env(small_swarm, test_registry, queue_timeout=60, prompt_cache_sessions=0)
    with backend(tmp_path_factory.mktemp("announced"), env) as server:
        yield server


def _room(server) -> int | None:
    """The max_length the swarm's server announces room for (Petals' units: 2 x tokens x blocks)."""
    body = httpx.get(server.url + "/api/v1/swarm", params={"model": "tiny"}, timeout=30).json()
    (entry,) = body["servers"]
    left = entry["cache_tokens_left"]
    return None if left is None else left // (2 * (entry["end"] - entry["start"]))


async def _recv(ws, timeout: float = 60) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _announced_below(server, tokens: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (room := await asyncio.to_thread(_room, server)) is None or room >= tokens:
        assert time.monotonic() < deadline, f"the server still announces room for {room} tokens"
        await asyncio.sleep(0.5)  # polling pace
    return room


def test_a_victim_waits_for_announced_cache_and_an_idle_attacker_yields_it(server):
    errors = server.metrics_value("petals_chat_swarm_errors_total")

    async def scenario():
        attacker = await connect(server.ws_url, local_addr=("127.0.0.2", 0))
        assert await ask(attacker, {"type": "open_inference_session", "model": "tiny", "max_length": 800}) == \
            {"ok": True}
        answered = await ask(attacker, {"type": "generate", "inputs": "Hello", "max_new_tokens": 2})
        assert answered["ok"], answered  # idle now, its 800 tokens reserved in the swarm
        room = await _announced_below(server, 512)
        victim = await connect(server.ws_url, local_addr=("127.0.0.3", 0))
        assert await ask(victim, {"type": "open_inference_session", "model": "tiny", "max_length": 512,
                                  "queue_updates": True}) == {"ok": True}
        started = time.monotonic()
        queued = await ask(victim, {"type": "generate", "inputs": "Hi", "max_new_tokens": 2})
        told = await _recv(attacker)  # it yields its cache
        with pytest.raises(websockets.ConnectionClosed):
            await _recv(attacker, 10)
        answer = await _recv(victim)
        waited = time.monotonic() - started
        await victim.close()
        return room, queued, told, answer, waited

    room, queued, told, answer, waited = asyncio.run(scenario())
    assert room < 512
    assert queued == {"ok": True, "queued": True, "position": 1}, queued
    assert told["code"] == "idle_timeout" and "idle while other users waited" in told["traceback"], told
    assert answer["ok"] is True and answer["stop"] is True, answer
    assert waited < 20  # no allocation timeout sat out
    # it never tried the swarm before the cache was free: no refusal (a CacheFull counts as a swarm error)
    assert server.metrics_value("petals_chat_swarm_errors_total") == errors
    assert server.wait_for_sessions(0) == 0
