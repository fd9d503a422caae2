"""HTTP/2 over TLS: ``hypercorn -c <deploy/hypercorn.toml adapted> backend.asgi:app`` with a certificate made here.

The HTTP APIs answer over HTTP/2 (ALPN h2), the WebSocket API over the same TLS port (HTTP/1.1
upgrade), and a SIGTERM tells open sockets "Server is shutting down" (idle ones at once, a
generating one when the grace period is almost over) before the server exits. The server runs one
Hypercorn worker process, so the shutdown is seen through the worker's shared event.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets
from reliability_helpers import WS_PATH, ask, collect

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
GRACE = 4
WORKERS = int(os.environ.get("HTTP2_TEST_WORKERS", "1"))


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, swarm, test_registry):
    from conftest import free_port, wait_healthy

    tmp = tmp_path_factory.mktemp("http2")
    cert, key = _self_signed(tmp)
    port = free_port()
    config = (REPO / "deploy" / "hypercorn.toml").read_text()
    config = config.replace('bind = ["0.0.0.0:8443"]', f'bind = ["127.0.0.1:{port}"]')
    config = config.replace('"deploy/cert.pem"', json.dumps(str(cert)))
    config = config.replace('"deploy/key.pem"', json.dumps(str(key)))
    config = config.replace("workers = 2", f"workers = {WORKERS}")
    config = config.replace("graceful_timeout = 30", f"graceful_timeout = {GRACE}")
    assert f"127.0.0.1:{port}" in config and str(cert) in config
    (tmp / "hypercorn.toml").write_text(config)
    log = tmp / "hypercorn.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PETALS_CHAT_DTYPE": "float32",
           "PETALS_CHAT_DEVICE": "cpu", "PETALS_CHAT_INITIAL_PEERS": " ".join(swarm.initial_peers),
           "PETALS_CHAT_MODELS": str(test_registry), "PETALS_CHAT_GRACEFUL_TIMEOUT": str(GRACE)}
    process = subprocess.Popen([sys.executable, "-m", "hypercorn", "-c", str(tmp / "hypercorn.toml"),
                                "backend.asgi:app"], cwd=REPO, env=env, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(cert))
    wait_healthy(url, process, log, 120, context=context)
    yield {"url": url, "ws_url": f"wss://127.0.0.1:{port}", "ssl": context, "process": process, "log": log,
           # httpx sets ALPN (h2) on the context it gets: WebSockets need one of their own (HTTP/1.1)
           "ws_ssl": ssl.create_default_context(cafile=str(cert))}
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_http_apis_over_http2(tls_server, reference):
    with httpx.Client(http2=True, verify=tls_server["ssl"], base_url=tls_server["url"], timeout=60) as client:
        legacy = client.post("/api/v1/generate", data={"model": "tiny", "inputs": "Hello", "max_new_tokens": "4"})
        chat = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3,
                                                         "messages": [{"role": "user", "content": "Hi"}]})
    assert legacy.http_version == "HTTP/2"
    expected = reference.decode(reference.greedy_ids(reference.encode("Hello"), 4))
    assert legacy.json() == {"ok": True, "outputs": expected}
    assert chat.http_version == "HTTP/2"
    if chat.status_code != 404:  # the OpenAI API, where present
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"


def test_websocket_api_over_tls(tls_server, reference):
    async def scenario():
        async with websockets.connect(tls_server["ws_url"] + WS_PATH, ssl=tls_server["ws_ssl"], open_timeout=10) as ws:
            opened = await ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 64})
            return opened, await collect(ws, {"type": "generate", "inputs": "Hello", "max_new_tokens": 4})

    opened, replies = asyncio.run(scenario())
    assert opened == {"ok": True}
    assert replies[-1]["outputs"] == reference.decode(reference.greedy_ids(reference.encode("Hello"), 4, eos=False))


def test_sigterm_tells_open_sockets_and_exits(tls_server):
    """Last in this module: it stops the server."""
    process = tls_server["process"]

    async def scenario():
        idle = await websockets.connect(tls_server["ws_url"] + WS_PATH, ssl=tls_server["ws_ssl"], open_timeout=10)
        busy = await websockets.connect(tls_server["ws_url"] + WS_PATH, ssl=tls_server["ws_ssl"], open_timeout=10)
        await ask(idle, {"type": "open_inference_session", "model": "tiny", "max_length": 64})
        await ask(busy, {"type": "open_inference_session", "model": "tiny", "max_length": 2000})
        await busy.send(json.dumps({"type": "generate", "inputs": "go", "max_new_tokens": 1,
                                    "stop_sequence": "never-generated-sequence"}))
        await busy.recv()
        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)  # Hypercorn's parent; it tells its worker

        async def last_words(ws):
            replies = []
            try:
                while True:
                    replies.append(json.loads(await asyncio.wait_for(ws.recv(), GRACE + 10)))
            except websockets.ConnectionClosed as closed:
                return replies, closed.rcvd.code if closed.rcvd else None, time.monotonic() - started

        return await asyncio.gather(last_words(idle), last_words(busy))

    (idle, idle_code, idle_at), (busy, busy_code, busy_at) = asyncio.run(scenario())
    assert idle == [{"ok": False, "traceback": idle[0]["traceback"], "code": "shutting_down"}]
    assert idle[0]["traceback"].startswith("Server is shutting down") and idle_code == 1001 and idle_at < 2
    assert all(r["ok"] for r in busy[:-1]) and len(busy) > 2  # it kept generating during the grace period
    assert busy[-1]["ok"] is False and busy[-1]["traceback"].startswith("Server is shutting down")
    assert busy_code == 1001 and GRACE - 2 < busy_at < GRACE + 3
    assert process.wait(GRACE + 15) == 0
