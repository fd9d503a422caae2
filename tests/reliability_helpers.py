"""Helpers shared by the reliability and security tests (faults, limits, fuzzing, security, HTTP/2)."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from pathlib import Path

import websockets

WS_PATH = "/api/v2/generate"


def backend_env(swarm, registry: Path, **settings) -> dict[str, str]:
    """Environment for ``start_backend``: the swarm, the test registry, and ``PETALS_CHAT_<NAME>`` settings."""
    env = {"PETALS_CHAT_INITIAL_PEERS": " ".join(swarm.initial_peers), "PETALS_CHAT_MODELS": str(registry)}
    env.update({f"PETALS_CHAT_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@contextmanager
def backend(tmp: Path, env: dict[str, str]):
    from conftest import start_backend, stop_backend

    server = start_backend(tmp, env)
    try:
        yield server
    finally:
        stop_backend(server)


async def connect(url: str, origin: str | None = None, **kwargs):
    headers = {"Origin": origin} if origin else {}
    return await websockets.connect(url + WS_PATH, additional_headers=headers, open_timeout=10, **kwargs)


async def ask(ws, payload, timeout: float = 60) -> dict:
    await ws.send(payload if isinstance(payload, (str, bytes)) else json.dumps(payload))
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def collect(ws, request: dict, timeout: float = 60, on_reply=None) -> list[dict]:
    """Send a generate request; return its replies up to the last one (stop, or an error)."""
    await ws.send(json.dumps(request))
    replies = []
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        replies.append(reply)
        if on_reply is not None:
            on_reply(reply, len(replies))
        if not reply["ok"] or reply["stop"]:
            return replies




def pick_stop(reference, generated: list[int], lowest: int) -> int:
    """An index p >= lowest whose token's text first appears there: a stop sequence that ends the text at p + 1."""
    for p in range(lowest, len(generated)):
        text = reference.decode(generated[p:p + 1])
        if text.strip() and text.isascii() and text.isprintable() and text not in reference.decode(generated[:p]) \
                and reference.decode(generated[:p + 1]).endswith(text):
            return p
    raise AssertionError("no usable stop token in the greedy continuation")
