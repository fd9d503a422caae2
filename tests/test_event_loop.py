"""Nothing heavy on the event loop (issue 15): while a huge input is being tokenized, other users' small
requests are served; lists of absurd length are refused before any validation.

In-process on the shared fake engine, whose ``count_tokens`` is wrapped so that tokenizing a long text waits
until the test lets it go. The test lets it go only after a small request has been answered: if the
tokenization ran on the event loop, the small request could not be served until the wait timed out, and the
test fails (no sleeps: the order is forced by events).
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from fake_engine import FakeEngine, in_process_app, run_in_app

pytestmark = pytest.mark.timeout(120)

HUGE = "x" * 200_000  # over the default 16384-token limit of the fake (one token per character)


class _SlowTokenizer:
    """Wraps ``engine.count_tokens``: a long text waits until ``release`` (or 10 s: then ``released`` has False)."""

    def __init__(self, engine: FakeEngine):
        self.count = engine.count_tokens
        self.started = threading.Event()
        self.release = threading.Event()
        self.released: list[bool] = []
        self.threads: set[str] = set()
        engine.count_tokens = self

    def __call__(self, model_key, text):
        if len(text) > 1000:
            self.threads.add(threading.current_thread().name)
            self.started.set()
            self.released.append(self.release.wait(10))
        return self.count(model_key, text)


async def _small_requests(client) -> list:
    """What another user does meanwhile: list the models, open a socket session."""
    models = await client.get("/api/v1/models")
    async with client.websocket("/api/v2/generate") as ws:
        await ws.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": 64}))
        opened = json.loads(await ws.receive())
    return [models.status_code, opened]


HUGE_REQUESTS = {
    "legacy http": ("/api/v1/generate", {"model": "tiny", "inputs": HUGE, "max_new_tokens": 1}),
    "openai chat": ("/v1/chat/completions", {"model": "tiny", "max_tokens": 1,
                                             "messages": [{"role": "user", "content": HUGE}]}),
}


@pytest.mark.parametrize("name", HUGE_REQUESTS)
def test_small_requests_are_served_while_a_huge_input_is_tokenized(registry, name):
    engine = FakeEngine()
    slow = _SlowTokenizer(engine)
    app = in_process_app(engine, registry)
    path, body = HUGE_REQUESTS[name]

    async def scenario(client):
        huge = asyncio.ensure_future(client.post(path, json=body))
        started = await asyncio.to_thread(slow.started.wait, 10)  # the huge input is being tokenized ...
        small = await _small_requests(client)  # ... and others are served meanwhile
        slow.release.set()
        response = await huge
        return started, small, response.status_code, await response.get_json()

    started, small, status, reply = run_in_app(app, scenario)
    assert started and small == [200, {"ok": True}]
    assert slow.released and all(slow.released), "the small requests waited for the tokenization"
    assert threading.main_thread().name not in slow.threads
    assert status == 413, reply


def test_socket_inputs_are_tokenized_off_the_loop_and_refused_early(registry):
    engine = FakeEngine()
    slow = _SlowTokenizer(engine)
    app = in_process_app(engine, registry)
    counted: list[int] = []
    slow.count = lambda key, text: counted.append(len(text)) or len(text)

    async def scenario(client):
        async with client.websocket("/api/v2/generate") as ws:
            await ws.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": 64}))
            await ws.receive()
            await ws.send(json.dumps({"type": "generate", "inputs": HUGE * 4, "max_new_tokens": 1}))
            started = await asyncio.to_thread(slow.started.wait, 10)
            small = await _small_requests(client)
            slow.release.set()
            return started, small, json.loads(await ws.receive())

    started, small, frame = run_in_app(app, scenario)
    assert started and small == [200, {"ok": True}] and all(slow.released)
    assert frame["code"] == "too_large" and "more than" in frame["traceback"], frame
    assert sum(counted) < len(HUGE * 4) / 2  # refused on a prefix: most of the text was never tokenized


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/generate"])
def test_a_hundred_thousand_messages_are_refused_before_validation(registry, path):
    engine = FakeEngine()
    app = in_process_app(engine, registry)
    body = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}] * 100_000}
    calls: list[str] = []
    engine.render_chat = lambda *args: calls.append("render") or ""

    async def scenario(client):
        response = await client.post(path, json=body)
        return response.status_code, await response.get_json()

    status, reply = run_in_app(app, scenario)
    message = reply.get("traceback") or reply["error"]["message"]
    assert status == 413 and "100000 items, limit 2048" in message and not calls, reply


def test_many_small_values_are_refused_too(registry):
    app = in_process_app(FakeEngine(), registry, max_list_items=16)
    body = {"model": "tiny", "inputs": "x", "max_new_tokens": 1, "a": [[1] * 16] * 16}

    async def scenario(client):
        response = await client.post("/api/v1/generate", json=body)
        ok = await client.post("/api/v1/generate", json={**body, "a": [[1] * 16] * 8})
        return response.status_code, await response.get_json(), ok.status_code

    status, reply, ok_status = run_in_app(app, scenario)
    assert status == 413 and "too many JSON values" in reply["traceback"] and ok_status != 413
