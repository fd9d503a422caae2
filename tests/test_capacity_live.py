"""Waiting in line and idle sessions yielding, against a real backend on the tiny swarm (issue 15), with clients on
several loopback addresses: with every session slot taken, a victim's request queues (its place shown) and then
succeeds when the attacker's session ends; an idle attacker yields its slot at once with a clear reason.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from reliability_helpers import ask, backend, backend_env, connect

pytestmark = pytest.mark.timeout(300)

SETTINGS = dict(max_sessions=1, queue_timeout=60, max_sessions_per_client=4)
NEVER = "never-generated-sequence"
OPEN = {"type": "open_inference_session", "model": "tiny", "max_length": 128}


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory, swarm, test_registry):
    with backend(tmp_path_factory.mktemp("queue"), backend_env(swarm, test_registry, **SETTINGS)) as server:
        yield server


def _from(address: str) -> dict:
    return {"local_addr": (address, 0)}


async def _recv(ws, timeout: float = 60) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _answer(ws) -> list[dict]:
    await ws.send(json.dumps({"type": "generate", "inputs": "Hello", "max_new_tokens": 4}))  # one reply
    frames = [await _recv(ws)]
    while frames[-1].get("ok") and not frames[-1].get("stop"):
        frames.append(await _recv(ws))
    return frames


def test_a_victim_queues_behind_a_generating_attacker_then_succeeds(one_slot):
    async def scenario():
        attacker = await connect(one_slot.ws_url, **_from("127.0.0.2"))
        assert await ask(attacker, OPEN) == {"ok": True}
        # a generation that runs until its session's 128 tokens are used up: the only slot is busy meanwhile
        await attacker.send(json.dumps({"type": "generate", "inputs": "Once", "max_new_tokens": 1,
                                        "stop_sequence": NEVER}))
        await _recv(attacker)
        victim = await connect(one_slot.ws_url, **_from("127.0.0.3"))
        queued = await ask(victim, {**OPEN, "queue_updates": True})
        started = time.monotonic()
        await attacker.close()  # the attacker leaves mid-generation: its session closes, the victim is next
        opened = await _recv(victim)
        waited = time.monotonic() - started
        answer = await asyncio.wait_for(_answer(victim), 60)
        await victim.close()
        return queued, opened, waited, answer

    queued, opened, waited, answer = asyncio.run(scenario())
    assert queued == {"ok": True, "queued": True, "position": 1}
    assert opened == {"ok": True} and waited < 20
    assert answer[-1]["ok"] is True and answer[-1]["stop"] is True, answer
    assert one_slot.wait_for_sessions(0) == 0


def test_an_idle_attacker_yields_its_slot_and_an_old_client_sees_no_new_frame(one_slot):
    async def scenario():
        attacker = await connect(one_slot.ws_url, **_from("127.0.0.2"))
        assert await ask(attacker, OPEN) == {"ok": True}  # holds the only slot, generating nothing
        victim = await connect(one_slot.ws_url, **_from("127.0.0.3"))
        started = time.monotonic()
        opened = await ask(victim, OPEN)  # an old client: no queue_updates
        waited = time.monotonic() - started
        told = await _recv(attacker)
        with pytest.raises(websockets.ConnectionClosed):
            await _recv(attacker, 10)
        answer = await asyncio.wait_for(_answer(victim), 60)
        await victim.close()
        return opened, waited, told, answer

    opened, waited, told, answer = asyncio.run(scenario())
    assert opened == {"ok": True} and waited < 10
    assert told["ok"] is False and told["code"] == "idle_timeout" and "idle while other users waited" in \
        told["traceback"], told
    assert answer[-1]["ok"] is True, answer
    assert one_slot.wait_for_sessions(0) == 0
