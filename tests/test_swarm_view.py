"""The swarm, visible (issue 12): ``GET /api/v1/swarm`` and the route and context size in the WebSocket API's last
frame. Unit tests of the DHT-to-JSON mapping and the cache, the route in-process on the fake engine, and both
against a real local Petals swarm behind a real Hypercorn backend."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import websockets
from conftest import ws_generate_once
from fake_engine import FAKE_PEERS, FakeEngine, in_process_app, run_in_app

from backend.engine import swarm_map
from backend.services.swarm_view import SwarmView

pytestmark = pytest.mark.timeout(180)


def _server(state: int, throughput: float, **extra):
    return SimpleNamespace(state=SimpleNamespace(value=state), throughput=throughput, **extra)


def _infos(layout: dict[str, tuple[range, SimpleNamespace]], blocks: int):
    """RemoteModuleInfo-likes for ``blocks`` blocks: each peer on its range of blocks."""
    return [SimpleNamespace(servers={peer: server for peer, (held, server) in layout.items() if i in held})
            for i in range(blocks)]


def test_servers_of_groups_blocks_per_peer_with_their_announced_facts():
    one = _server(2, 123.456, cache_tokens_left=8192, version="2.2.0", public_name="alice")
    two = _server(1, 50.0)
    gap = _server(2, 7.0)
    infos = _infos({"12D3KooWBBBBBBbbbbbb": (range(2, 4), two), "12D3KooWAAAAAAaaaaaa": (range(0, 3), one),
                    "12D3KooWCCCCCCcccccc": (range(0, 1), gap)}, 4)
    infos.append(None)  # a block nobody announces
    servers = swarm_map.servers_of(infos)
    assert [(s["peer_id"], s["start"], s["end"]) for s in servers] == [
        ("12D3KooWCCCCCCcccccc", 0, 1), ("12D3KooWAAAAAAaaaaaa", 0, 3), ("12D3KooWBBBBBBbbbbbb", 2, 4)]
    first = servers[1]
    assert first["short_id"] == "...aaaaaa" and first["state"] == "online" and first["throughput"] == 123.46
    assert first["cache_tokens_left"] == 8192 and first["version"] == "2.2.0" and first["public_name"] == "alice"
    assert servers[2]["state"] == "joining" and servers[2]["cache_tokens_left"] is None
    summary = swarm_map.swarm_summary("m", infos)
    # block 3 is held only by a joining server, block 4 by nobody
    assert (summary["blocks_total"], summary["blocks_served"], summary["swarm_ok"]) == (5, 3, False)


def test_a_server_with_a_hole_in_its_blocks_lists_each_span():
    infos = _infos({"12D3KooWholeyholey": (range(0, 6), _server(2, 1.0))}, 6)
    infos[2] = SimpleNamespace(servers={})
    (server,) = swarm_map.servers_of(infos)
    assert server["spans"] == [[0, 2], [3, 6]] and (server["start"], server["end"]) == (0, 6)


def test_route_of_reads_the_spans_of_a_petals_session():
    spans = [SimpleNamespace(span=SimpleNamespace(peer_id="12D3KooWx", start=0, end=3)),
             SimpleNamespace(span=SimpleNamespace(peer_id="12D3KooWy", start=3, end=4))]
    assert swarm_map.route_of(spans) == [{"peer_id": "12D3KooWx", "start": 0, "end": 3},
                                         {"peer_id": "12D3KooWy", "start": 3, "end": 4}]


def test_the_swarm_view_reads_the_engine_at_most_once_per_ttl_and_once_for_concurrent_readers():
    engine = FakeEngine()
    now = [100.0]
    view = SwarmView(engine, ttl=5.0, clock=lambda: now[0])

    async def scenario():
        first = await asyncio.gather(*(view.servers("tiny") for _ in range(5)))
        now[0] += 4.0
        cached = await view.servers("tiny")
        now[0] += 1.0
        fresh = await view.servers("tiny")
        return first, cached, fresh

    first, cached, fresh = asyncio.run(scenario())
    assert engine.swarm_reads == 2
    assert first[0]["age_s"] == 0.0 and cached["age_s"] == 4.0 and fresh["age_s"] == 0.0


def test_swarm_endpoint_and_the_last_frame_in_process(registry):
    engine = FakeEngine()
    app = in_process_app(engine, registry)

    async def scenario(client):
        ok = await client.get("/api/v1/swarm?model=tiny-alias")
        default = await client.get("/api/v1/swarm")
        unknown = await client.get("/api/v1/swarm?model=nope")
        return (ok.status_code, await ok.get_json()), await default.get_json(), (unknown.status_code,
                                                                                await unknown.get_json())

    (status, body), default, (unknown_status, unknown) = run_in_app(app, scenario)
    assert status == 200 and body["ok"] and body["model"] == "tiny" and default["model"] == "tiny"
    assert [s["peer_id"] for s in body["servers"]] == list(FAKE_PEERS)
    assert unknown_status == 404 and unknown["code"] == "unknown_model"


# ---------------------------------------------------------------------------------------- the real swarm
def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_real_swarm_is_listed_and_the_answer_carries_its_route_and_context_size(live_server, reference):
    status, body = _get(live_server.url + "/api/v1/swarm?model=tiny")
    assert status == 200 and body["ok"] and body["swarm_ok"], body
    blocks = body["blocks_total"]
    (server,) = body["servers"]  # the test swarm: one server holding every block
    assert (server["start"], server["end"], server["state"]) == (0, blocks, "online")
    assert server["peer_id"].startswith("12D3Koo") and server["short_id"] == "..." + server["peer_id"][-6:]
    assert server["throughput"] > 0 and server["version"]
    assert server["cache_tokens_left"] is None or server["cache_tokens_left"] > 0

    prompt = "<|im_start|>user\nWhere are we?<|im_end|>\n<|im_start|>assistant\n"

    async def first_round() -> tuple[list[dict], dict]:
        """With a stop sequence (rounds until it, which the tiny model never says): the first two frames."""
        async with websockets.connect(live_server.ws_url + "/api/v2/generate", open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": 128}))
            assert json.loads(await ws.recv()) == {"ok": True}
            await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 1,
                                      "stop_sequence": "<|im_end|>"}))
            return [json.loads(await asyncio.wait_for(ws.recv(), 60)) for _ in range(2)]

    first, second = asyncio.run(first_round())
    # the first round carries the facts too (a page that cuts the answer at its own limit knows them), later ones not
    assert first["route"] == [{"peer_id": server["peer_id"], "start": 0, "end": blocks}]
    assert first["context_tokens"] == len(reference.encode(prompt)) + 1 and first["stop"] is False
    assert "route" not in second and "context_tokens" not in second

    last = asyncio.run(ws_generate_once(live_server.ws_url, "tiny", prompt, max_length=128, max_new_tokens=6))
    assert last["ok"] and last["stop"], last
    assert last["route"] == [{"peer_id": server["peer_id"], "start": 0, "end": blocks}]
    assert last["context_tokens"] == len(reference.encode(prompt)) + last["token_count"] == len(
        reference.encode(prompt)) + 6
