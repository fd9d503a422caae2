"""Health that tells the truth, in-process on the shared fake engine: one model that cannot load does not make
the app unhealthy, it is reported per model, retried with capped backoff on a thread that stops at shutdown, and
requests for it get one clear line; the operator chooses the models to serve (``serve_models``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO
from fake_engine import FakeEngine, in_process_app

from backend.services.model_loader import ModelLoader, backoff
from backend.settings import SettingsError, load_settings, parse_cli

pytestmark = pytest.mark.timeout(60)

OFFLINE = "OSError: cannot reach the weights offline"  # the fake engine's load error


async def _poll(client, path: str, done, timeout: float = 20):
    """GET ``path`` until ``done(status, body)``; return the last (status, body)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(path)
        result = response.status_code, await response.get_json()
        if done(*result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.01)


def test_backoff_doubles_from_min_and_is_capped():
    assert [backoff(n, 10, 300) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert backoff(10_000, 0.5, 60) == 60  # no overflow after many failures


def test_a_model_that_fails_to_load_is_reported_retried_and_does_not_make_the_app_unhealthy(registry):
    engine = FakeEngine(failures={"tiny": -1})

    async def scenario():
        app = in_process_app(engine, registry, model_retry_backoff=60.0, model_retry_max_backoff=600.0)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            status, ready = await _poll(client, "/readyz", lambda s, b: b["models"]["tiny"]["state"] == "failed")
            health = await client.get("/healthz")
            completion = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
            legacy = await client.post("/api/v1/generate", json={"model": "tiny", "inputs": "x", "max_new_tokens": 1})
            models = await client.get("/api/v1/models")
            loader = app.extensions["petals_chat"].loader
            return (status, ready, health.status_code, await health.get_json(), completion.status_code,
                    await completion.get_json(), await legacy.get_json(), await models.get_json(), loader)

    status, ready, health_status, health, completion_status, completion, legacy, models, loader = asyncio.run(
        scenario())
    # /readyz: 200 because tiny-private serves; tiny failed with its error and the next retry
    assert status == 200 and ready["status"] == "ready", ready
    tiny, private = ready["models"]["tiny"], ready["models"]["tiny-private"]
    assert tiny["state"] == "failed" and not tiny["ready"] and tiny["error"] == OFFLINE and tiny["attempts"] == 1
    assert 50 < tiny["retry_in_s"] <= 60 and tiny["retry_at"].endswith("+00:00")
    assert private["state"] == "ready" and private["swarm_ok"] and private["blocks_served"] == 4
    assert "swarm_ok" not in tiny
    # /healthz: live and useful
    assert health_status == 200 and health["status"] == "ok"
    assert health["models"]["tiny"]["state"] == "failed" and health["models"]["tiny-private"]["ready"]
    # requests for the failed model: one line saying it failed, why, and when it is retried
    assert completion_status == 503 and completion["error"]["code"] == "model_not_ready"
    message = completion["error"]["message"]
    assert message.startswith(f"Model tiny failed to load ({OFFLINE}); retrying in ") and message.endswith(" s")
    assert "\n" not in message
    assert legacy["ok"] is False and legacy["traceback"].startswith(f"Model tiny failed to load ({OFFLINE})")
    by_key = {m["key"]: m for m in models["models"]}
    assert by_key["tiny"]["ready"] is False and by_key["tiny"]["error"] == OFFLINE
    # loading ran on the loader's thread, which stopped at shutdown although its next retry was a minute away
    assert engine.load_threads == {"model-loader"} and engine.load_attempts["tiny"] == 1
    assert not loader.running and engine.shut_down


def test_a_failed_model_is_retried_with_backoff_until_it_loads(registry):
    engine = FakeEngine(failures={"tiny": 3})

    async def scenario():
        app = in_process_app(engine, registry, model_retry_backoff=0.01, model_retry_max_backoff=0.02)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            return await _poll(client, "/readyz", lambda s, b: b["models"]["tiny"]["ready"])

    status, ready = asyncio.run(scenario())
    tiny = ready["models"]["tiny"]
    assert status == 200 and tiny["state"] == "ready" and "error" not in tiny and tiny["swarm_ok"], ready
    assert tiny["attempts"] == 4 and engine.load_attempts["tiny"] == 4


def test_retries_wait_the_capped_backoff():
    engine = FakeEngine(failures={"tiny": -1}, models=("tiny",))
    loader = ModelLoader(engine, ["tiny"], min_backoff=0.1, max_backoff=0.4)
    seen: dict[int, float] = {}  # attempts -> the wait it scheduled (retry_at minus the time of the failure)
    original = engine.load

    def load(progress=None, keys=None):
        original(progress, keys)
        seen[engine.load_attempts["tiny"]] = time.time()

    engine.load = load
    loader.start()
    try:
        deadline = time.monotonic() + 20
        waits = {}
        while len(waits) < 5 and time.monotonic() < deadline:
            state = loader.state("tiny")
            if state.state == "failed" and state.attempts in seen:
                waits[state.attempts] = state.retry_at - seen[state.attempts]
            time.sleep(0.002)  # polling pace, not synchronisation
    finally:
        loader.stop()
    assert not loader.running
    expected = {n: backoff(n, 0.1, 0.4) for n in waits}
    assert len(waits) == 5 and all(0 <= waits[n] - expected[n] < 0.05 for n in waits), (waits, expected)
    assert 0.4 in expected.values()  # the cap was reached (and held)


def test_while_every_model_loads_or_fails_the_app_is_not_healthy(registry):
    gate = threading.Event()
    loading = FakeEngine(gate=gate)
    failing = FakeEngine(failures={"tiny": -1, "tiny-private": -1})

    async def scenario():
        app = in_process_app(loading, registry)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
            request = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
            before = (health.status_code, await health.get_json(), ready.status_code, await request.get_json())
            gate.set()
            after = await _poll(client, "/healthz", lambda s, b: s == 200)
        app = in_process_app(failing, registry, model_retry_backoff=60.0)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            failed = await _poll(client, "/healthz", lambda s, b: b["status"] == "failed")
            failed_ready = await client.get("/readyz")
            return before, after, failed, failed_ready.status_code, await failed_ready.get_json()

    before, after, failed, failed_ready_status, failed_ready = asyncio.run(scenario())
    health_status, health, ready_status, request = before
    assert health_status == 503 and health["status"] == "loading" and ready_status == 503
    assert health["models"]["tiny"]["state"] == "loading"
    assert request["error"]["message"] == "Model tiny is still loading, retry in a moment"
    assert after[0] == 200 and after[1]["status"] == "ok"
    assert failed[0] == 503 and {m["state"] for m in failed[1]["models"].values()} == {"failed"}
    assert failed_ready_status == 503 and failed_ready["status"] == "not ready"


def test_serve_models_chooses_the_registry_models(registry):
    assert load_settings(environ={"PETALS_CHAT_SERVE_MODELS": "tiny, tiny-private"}).serve_models == [
        "tiny", "tiny-private"]
    assert load_settings(cli=parse_cli(["--serve-models", "tiny-alias"])).serve_models == ["tiny-alias"]
    assert load_settings(environ={}).serve_models == []  # default: every model

    engine = FakeEngine()

    async def scenario():
        app = in_process_app(engine, registry, serve_models="tiny-alias")  # an alias names its model
        async with app.test_app() as test_app:
            client = test_app.test_client()
            models = await (await client.get("/api/v1/models")).get_json()
            ready = await (await client.get("/readyz")).get_json()
            other = await client.post("/v1/completions", json={"model": "tiny-private", "prompt": "x"})
            return models, ready, other.status_code

    models, ready, other_status = asyncio.run(scenario())
    assert [m["key"] for m in models["models"]] == ["tiny"] and models["default"] == "tiny"
    assert set(ready["models"]) == {"tiny"} and other_status == 404
    assert engine.load_attempts["tiny-private"] == 0

    with pytest.raises(SettingsError, match=r"serve_models \(PETALS_CHAT_SERVE_MODELS\).*'nope' is not in the "):
        in_process_app(FakeEngine(), registry, serve_models="tiny,nope")


def test_an_unknown_model_in_serve_models_stops_the_app_at_start_with_one_line(registry):
    env = {**os.environ, "PETALS_CHAT_MODELS": str(registry), "PETALS_CHAT_SERVE_MODELS": "tiny,nope",
           "PETALS_CHAT_INITIAL_PEERS": "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWNoSuchPeer"}
    result = subprocess.run([sys.executable, "-m", "backend"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: invalid setting serve_models (PETALS_CHAT_SERVE_MODELS): 'nope' is not in the registry "
        "(known: tiny, tiny-private)"]
