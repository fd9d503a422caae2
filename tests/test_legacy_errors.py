"""Legacy error replies (HTTP and WebSocket) carry a stable ``code``; a swarm failure is counted once.

In-process (Quart's test client) on the shared fake engine: its stream yields 'a', 'b', then fails.
"""

from __future__ import annotations

import json

import pytest
from fake_engine import FakeEngine, in_process_app, run_in_app, swarm_errors

from backend.errors import CacheFull, SwarmError

pytestmark = pytest.mark.timeout(60)


class FailingEngine(FakeEngine):
    """Streams 'a', 'b', then raises ``error`` (at once: no pause)."""

    def __init__(self, error: Exception, **kwargs):
        super().__init__(**kwargs)
        self.error = error

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        from backend.engine.types import Chunk

        yield Chunk(text="a", tokens=1)
        yield Chunk(text="b", tokens=1)
        raise self.error


@pytest.mark.parametrize("body, status, code", [
    ({"inputs": "x", "max_new_tokens": 2}, 400, "bad_request"),
    ({"model": "nope", "inputs": "x", "max_new_tokens": 2}, 404, "unknown_model"),
    ({"model": "tiny-private", "inputs": "x", "max_new_tokens": 2}, 403, "forbidden"),
    ({"model": "tiny", "inputs": "x", "max_length": 5000}, 400, "max_length_exceeded"),
    ({"model": "tiny", "inputs": "x" * 70, "max_new_tokens": 1}, 413, "too_large"),
])
def test_http_errors_have_a_code(registry, body, status, code):
    app = in_process_app(FakeEngine(), registry, max_input_tokens=64)  # the fake counts characters

    async def scenario(client):
        response = await client.post("/api/v1/generate", json=body)
        return response.status_code, await response.get_json()

    got_status, reply = run_in_app(app, scenario)
    assert (got_status, reply["ok"], reply["code"]) == (status, False, code), reply
    assert "\n" not in reply["traceback"]


def test_http_not_ready_and_framework_errors_have_a_code(registry):
    app = in_process_app(FakeEngine(ready=False), registry)

    async def scenario(client):
        loading = await client.post("/api/v1/generate", json={"model": "tiny", "inputs": "x", "max_new_tokens": 1})
        missing = await client.post("/api/v1/nothing")
        return (loading.status_code, await loading.get_json()), (missing.status_code, await missing.get_json())

    (status, loading), (missing_status, missing) = run_in_app(app, scenario)
    assert status == 503 and loading["code"] == "not_ready"
    assert missing_status == 404 and missing["code"] == "not_found"


def test_debug_appends_the_traceback(registry):
    app = in_process_app(FakeEngine(), registry, debug=True)

    async def scenario(client):
        return await (await client.post("/api/v1/generate", json={"model": "nope", "max_new_tokens": 1})).get_json()

    reply = run_in_app(app, scenario)
    assert reply["code"] == "unknown_model" and "\nTraceback (most recent call last)" in reply["traceback"]


@pytest.mark.parametrize("error, code", [(SwarmError("Swarm error: gone"), "swarm_error"),
                                         (CacheFull("The swarm is out of capacity: attention cache is full"),
                                          "cache_full")])
def test_http_stream_failure_is_a_coded_frame_then_done(registry, error, code):
    app = in_process_app(FailingEngine(error), registry)

    async def scenario(client):
        response = await client.post("/api/v1/generate", json={"model": "tiny", "inputs": "x", "max_new_tokens": 5,
                                                               "stream": True})
        return await response.get_data(as_text=True)

    events = [e[len("data: "):] for e in run_in_app(app, scenario).split("\n\n") if e]
    assert events[-1] == "[DONE]"
    frames = [json.loads(e) for e in events[:-1]]
    assert [f.get("outputs") for f in frames[:-1]] == ["a", "b"]
    assert frames[-1]["ok"] is False and frames[-1]["code"] == code
    assert swarm_errors(app) == 1


def test_websocket_errors_have_a_code_and_swarm_failures_count_once(registry):
    engine = FailingEngine(CacheFull("The swarm is out of capacity: attention cache is full"))
    app = in_process_app(engine, registry)

    async def scenario(client):
        replies = []
        async with client.websocket("/api/v2/generate") as ws:
            for request in ({"type": "generate"}, {"type": "open_inference_session", "model": "nope", "max_length": 64},
                            {"type": "open_inference_session", "model": "tiny", "max_length": 64},
                            {"type": "generate", "inputs": "x", "max_new_tokens": 1, "stop_sequence": "z"}):
                await ws.send(json.dumps(request))
                while (reply := json.loads(await ws.receive())).get("outputs") is not None:
                    replies.append(reply)
                replies.append(reply)
        return replies

    replies = run_in_app(app, scenario)
    codes = [r.get("code") for r in replies if not r["ok"]]
    assert codes == ["bad_request", "unknown_model", "cache_full"], replies
    assert "the inference session was closed" in replies[-1]["traceback"]
    assert swarm_errors(app) == 1 and engine.open_sessions == 0
