"""The legacy HTTP API (/api/v1/generate, /api/v1/models) over real HTTP, a real backend and a real swarm."""

from __future__ import annotations

import subprocess

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)


def test_curl_example_with_form_fields(live_server, reference):
    """The README's curl example, run with curl itself."""
    out = subprocess.run(["curl", "-s", "-X", "POST", live_server.url + "/api/v1/generate",
                          "-d", "model=tiny", "-d", "inputs=Once upon a time,", "-d", "max_new_tokens=6"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    body = httpx.Response(200, content=out).json()
    expected = reference.greedy_ids(reference.encode("Once upon a time,"), 6)
    assert body == {"ok": True, "outputs": reference.decode(expected)}


def test_json_body_and_query_string(live_server, reference):
    expected = reference.decode(reference.greedy_ids(reference.encode("Hello"), 4))
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        by_json = client.post("/api/v1/generate", json={"model": "tiny-alias", "inputs": "Hello",
                                                        "max_new_tokens": 4, "do_sample": 0}).json()
        by_query = client.post("/api/v1/generate", params={"model": "tiny", "inputs": "Hello",
                                                           "max_new_tokens": "4"}).json()
        by_max_length = client.post("/api/v1/generate", data={"model": "tiny", "inputs": "Hello",
                                                              "max_length": str(len(reference.encode("Hello")) + 4)})
    assert by_json == by_query == by_max_length.json() == {"ok": True, "outputs": expected}


def test_sampling_parameters_are_accepted(live_server):
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        r = client.post("/api/v1/generate", data={"model": "tiny", "inputs": "Hi", "max_new_tokens": "5",
                                                  "do_sample": "1", "temperature": "0.7", "top_k": "20",
                                                  "top_p": "0.9", "repetition_penalty": "1.1"})
    assert r.status_code == 200 and r.json()["ok"] is True and isinstance(r.json()["outputs"], str)


@pytest.mark.parametrize("data, status, phrase", [
    ({"inputs": "x", "max_new_tokens": "2"}, 400, "'model' is required"),
    ({"model": "nope", "inputs": "x", "max_new_tokens": "2"}, 404, "Unknown model"),
    ({"model": "tiny", "inputs": "x"}, 400, "one of max_new_tokens or max_length is required"),
    ({"model": "tiny", "inputs": "x", "max_new_tokens": "two"}, 400, "invalid 'max_new_tokens'"),
    ({"model": "tiny", "inputs": "x", "max_new_tokens": "-1"}, 400, "invalid 'max_new_tokens'"),
    ({"model": "tiny", "inputs": "x", "max_new_tokens": "99999999"}, 400, "above this server's limit"),
    ({"model": "tiny", "inputs": "x", "max_new_tokens": "2", "temperature": "warm"}, 400, "invalid 'temperature'"),
    ({"model": "tiny", "inputs": "x", "max_new_tokens": "2", "do_sample": "maybe"}, 400, "invalid 'do_sample'"),
    ({"model": "tiny", "inputs": "x", "max_length": "5000"}, 400, "Maximum length exceeded"),
    ({"model": "tiny-private", "inputs": "x", "max_new_tokens": "2"}, 403, "do not provide public API"),
])
def test_bad_requests_get_a_status_and_one_line(live_server, data, status, phrase):
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        r = client.post("/api/v1/generate", data=data)
        body = r.json()
        assert r.status_code == status, body
        assert body["ok"] is False and phrase in body["traceback"] and "\n" not in body["traceback"]
        # the next request is served
        assert client.post("/api/v1/generate", data={"model": "tiny", "inputs": "y",
                                                     "max_new_tokens": "1"}).json()["ok"] is True


def test_malformed_json_body(live_server):
    r = httpx.post(live_server.url + "/api/v1/generate", content=b"{oops",
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "malformed JSON" in r.json()["traceback"]


def test_models_listing(live_server):
    body = httpx.get(live_server.url + "/api/v1/models", timeout=30).json()
    assert body["default"] == "tiny"
    by_key = {m["key"]: m for m in body["models"]}
    assert set(by_key) == {"tiny", "tiny-private"}
    tiny = by_key["tiny"]
    assert tiny["ready"] is True and tiny["aliases"] == ["tiny-alias"] and tiny["family"] == "Tiny"
    assert tiny["public_api"] is True and by_key["tiny-private"]["public_api"] is False
    assert tiny["chat"]["use_chat_template"] is True and "<|im_start|>" in tiny["chat"]["chat_template"]
    assert tiny["chat"]["stop_token"] == "<|im_end|>" and tiny["chat"]["max_session_length"] == 2048
    assert by_key["tiny-private"]["chat"]["chat_template"] is None


def test_health_and_security_headers(live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = client.get("/readyz").json()
        assert ready["models"]["tiny"]["blocks_served"] == ready["models"]["tiny"]["blocks_total"] == 4
        assert ready["models"]["tiny"]["servers"] == 1
        r = client.get("/api/v1/models")
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Request-ID"]
