"""The page's privileges (no API key, ``public_api = false`` models) come from a trusted host name, never from
``Origin`` = ``scheme://Host`` alone: the DNS-rebinding pair ``Host: evil.example`` + ``Origin:
http://evil.example`` gets nothing (issue 15). In-process on the shared fake engine.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fake_engine import FakeEngine, in_process_app

from backend.routes.common import host_name, trusted_hosts
from backend.settings import load_settings

pytestmark = pytest.mark.timeout(60)

REBINDING = {"Host": "evil.example:5000", "Origin": "http://evil.example:5000"}
LOOPBACK = {"Host": "127.0.0.1:5000", "Origin": "http://127.0.0.1:5000"}
NAMED = {"Host": "chat.example.org", "Origin": "http://chat.example.org"}


def _privileges(app, headers: dict) -> tuple[int, list[str], dict]:
    """(status of /v1/models without a key, the model ids it lists, the socket's answer for the private model)."""
    async def main():
        async with app.test_app() as test_app:
            client = test_app.test_client()
            response = await client.get("/v1/models", headers=headers)
            listed = [m["id"] for m in (await response.get_json()).get("data", [])]
            async with client.websocket("/api/v2/generate", headers=headers) as ws:
                await ws.send(json.dumps({"type": "open_inference_session", "model": "tiny-private",
                                          "max_length": 16}))
                opened = json.loads(await ws.receive())
            return response.status_code, listed, opened

    return asyncio.run(main())


def test_the_dns_rebinding_pair_gets_no_privileges(registry):
    app = in_process_app(FakeEngine(), registry, api_keys="secret")
    status, listed, opened = _privileges(app, REBINDING)
    assert status == 401 and listed == []
    assert opened["ok"] is False and opened["code"] == "forbidden"


def test_the_page_on_a_loopback_name_keeps_its_privileges(registry):
    app = in_process_app(FakeEngine(), registry, api_keys="secret")
    status, listed, opened = _privileges(app, LOOPBACK)
    assert status == 200 and "tiny-private" in listed and opened == {"ok": True}
    assert _privileges(app, {**LOOPBACK, "Origin": "http://127.0.0.1:5001"})[0] == 401  # not the same origin


def test_allowed_hosts_names_the_page_and_nothing_else(registry):
    app = in_process_app(FakeEngine(), registry, api_keys="secret", allowed_hosts="chat.example.org")
    status, listed, opened = _privileges(app, NAMED)
    assert status == 200 and "tiny-private" in listed and opened == {"ok": True}
    for headers in (REBINDING, LOOPBACK):  # configured: only the configured names
        assert _privileges(app, headers)[0] == 401


def test_trusted_hosts_by_default(registry):
    def trusted(host: str) -> frozenset[str]:
        return trusted_hosts(load_settings(environ={}, models=registry, host=host))

    assert trusted("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert trusted("0.0.0.0") == {"localhost", "127.0.0.1", "::1"}  # a wildcard adds no name
    assert "192.168.1.10" in trusted("192.168.1.10") and "evil.example" not in trusted("192.168.1.10")
    assert [host_name(h) for h in ("[::1]:5000", "LocalHost:80", "a.example", "::1")] == \
        ["::1", "localhost", "a.example", "::1"]
