"""Security: headers, CORS from settings, ``public_api = false`` on every legacy route, no tracebacks or
file paths in client-facing errors unless ``debug``, no prompt text in logs unless ``log_prompts``.

``live_server`` has the defaults (CORS ``*``, debug and log_prompts off); ``loose`` turns debug and
log_prompts on and allows one CORS origin.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from reliability_helpers import ask, backend, backend_env, collect, connect

pytestmark = pytest.mark.timeout(180)

GOOD_ORIGIN = "https://good.example"
BAD_ORIGIN = "https://evil.example"


@pytest.fixture(scope="module")
def loose(tmp_path_factory, swarm, test_registry):
    env = backend_env(swarm, test_registry, debug="true", log_prompts="true", cors_origins=GOOD_ORIGIN)
    with backend(tmp_path_factory.mktemp("security"), env) as server:
        yield server


def test_security_headers_on_the_page(live_server):
    r = httpx.get(live_server.url + "/", timeout=30)
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert r.headers["X-Frame-Options"] == "DENY"


def test_cors_default_allows_any_origin(live_server):
    r = httpx.options(live_server.url + "/api/v1/generate", timeout=30,
                      headers={"Origin": BAD_ORIGIN, "Access-Control-Request-Method": "POST"})
    assert r.headers.get("Access-Control-Allow-Origin") == "*"


def test_cors_origins_from_settings(loose):
    with httpx.Client(base_url=loose.url, timeout=30) as client:
        good = client.get("/api/v1/models", headers={"Origin": GOOD_ORIGIN})
        bad = client.get("/api/v1/models", headers={"Origin": BAD_ORIGIN})
        preflight = client.options("/api/v1/generate", headers={"Origin": BAD_ORIGIN,
                                                                "Access-Control-Request-Method": "POST"})
    assert good.headers.get("Access-Control-Allow-Origin") == GOOD_ORIGIN
    assert "Access-Control-Allow-Origin" not in bad.headers
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_private_model_refused_on_every_legacy_route(live_server):
    open_private = {"type": "open_inference_session", "model": "tiny-private", "max_length": 16}

    async def socket(origin):
        async with await connect(live_server.ws_url, origin=origin) as ws:
            return await ask(ws, open_private)

    async def scenario():
        return [await socket(origin) for origin in (None, BAD_ORIGIN, live_server.url + ".evil.example",
                                                    "null")]

    for reply in asyncio.run(scenario()):
        assert reply["ok"] is False and "do not provide public API" in reply["traceback"]
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        for headers in ({}, {"Origin": live_server.url}):  # the HTTP API never serves it, not even to our page
            r = client.post("/api/v1/generate", data={"model": "tiny-private", "inputs": "x",
                                                      "max_new_tokens": "1"}, headers=headers)
            assert r.status_code == 403 and "do not provide public API" in r.json()["traceback"]


def _no_internals(message: str) -> None:
    assert "Traceback" not in message and 'File "' not in message and ".py" not in message, message
    assert "/work/" not in message and "site-packages" not in message, message


def test_errors_carry_no_traceback_or_path_without_debug(live_server):
    async def scenario():
        async with await connect(live_server.ws_url) as ws:
            return [await ask(ws, payload) for payload in (
                "{broken", {"type": "generate", "max_new_tokens": 1},
                {"type": "open_inference_session", "model": "nope", "max_length": 8})]

    replies = asyncio.run(scenario())
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        responses = [client.post("/api/v1/generate", data={"model": "nope", "max_new_tokens": "1"}),
                     client.get("/api/v1/generate"),  # wrong method
                     client.post("/api/v1/nothing-here"),
                     client.post("/api/v1/generate", content=b"\xff\xfe", headers={"Content-Type": "application/json"})]
    for reply in replies:
        assert reply["ok"] is False
        _no_internals(reply["traceback"])
    for r in responses:
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/json"), r.text
        _no_internals(r.json()["traceback"])


def test_debug_adds_the_traceback(loose):
    async def scenario():
        async with await connect(loose.ws_url) as ws:
            return await ask(ws, {"type": "open_inference_session", "model": "nope", "max_length": 8})

    reply = asyncio.run(scenario())
    assert reply["ok"] is False and reply["traceback"].startswith("Unknown model")
    assert "Traceback (most recent call last)" in reply["traceback"]


def _prompt_roundtrip(server, marker: str) -> str:
    async def scenario():
        async with await connect(server.ws_url) as ws:
            await ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 64})
            return await collect(ws, {"type": "generate", "inputs": f"secret {marker}", "max_new_tokens": 2})

    replies = asyncio.run(scenario())
    httpx.post(server.url + "/api/v1/generate", timeout=30,
               data={"model": "tiny", "inputs": f"form {marker}", "max_new_tokens": "1"})
    last = "last-" + uuid.uuid4().hex  # not the marker: the log may not carry it
    httpx.post(server.url + "/api/v1/generate", timeout=30, headers={"X-Request-ID": last},
               params={"model": "tiny", "inputs": f"query {marker}", "max_new_tokens": "1"})
    deadline = time.monotonic() + 10  # the log is written by another process: its last request's line ends it
    while f"request_id={last}" not in server.log.read_text():
        assert time.monotonic() < deadline, "the last request was never logged"
        time.sleep(0.05)  # polling pace
    return "".join(r["outputs"] for r in replies)


def test_logs_carry_no_prompt_text_by_default(live_server):
    marker = uuid.uuid4().hex
    _prompt_roundtrip(live_server, marker)
    assert marker not in live_server.log.read_text()


def test_log_prompts_setting_logs_prompts_and_answers(loose):
    marker = uuid.uuid4().hex
    answer = _prompt_roundtrip(loose, marker)
    log = loose.log.read_text()
    for kind in ("secret", "form", "query"):
        assert f"{kind} {marker}" in log
    assert repr(answer) in log  # the answer too
