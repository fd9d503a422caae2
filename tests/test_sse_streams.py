"""Every stream (legacy HTTP and OpenAI) outlives Quart's RESPONSE_TIMEOUT and ends with its last frame and [DONE].

In-process: the app's RESPONSE_TIMEOUT is set far below the stream's length, which is what a
1,500-token answer on a slow swarm is to the default 60 s.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from conftest import write_registry

from backend.engine.types import Chunk, ModelStatus

RESPONSE_TIMEOUT = 0.05
TOKENS = 8
TOKEN_SECONDS = 0.02  # the stream lasts TOKENS * TOKEN_SECONDS = 0.16 s, over three times the timeout

pytestmark = pytest.mark.timeout(60)


class SlowEngine:
    """Every model ready; renders and counts by characters; each token takes TOKEN_SECONDS."""

    def __init__(self):
        self.open_sessions = 0

    def load(self, progress=None, keys=None):
        pass

    def status(self):
        return {key: ModelStatus(key=key, ready=True) for key in ("tiny", "tiny-private")}

    def count_tokens(self, model_key, text):
        return len(text)

    def render_chat(self, model_key, messages):
        return "".join(m["content"] for m in messages)

    async def open_session(self, model_key, max_length):
        self.open_sessions += 1
        return SimpleNamespace(model_key=model_key, max_length=max_length, length=0)

    async def close_session(self, session):
        self.open_sessions -= 1

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        for i in range(max_new_tokens):
            await asyncio.sleep(TOKEN_SECONDS)  # the slow swarm itself, not synchronisation
            yield Chunk(text="x", tokens=1, finish_reason="length" if i == max_new_tokens - 1 else None)

    def shutdown(self):
        pass


def _stream(tmp_path, path: str, body: dict) -> tuple[int, str, SlowEngine]:
    from backend.app import create_app
    from backend.settings import load_settings

    engine = SlowEngine()
    registry = write_registry(tmp_path, tmp_path / "no-weights")
    app = create_app(load_settings(environ={}, models=registry), engine=engine)
    app.config["RESPONSE_TIMEOUT"] = RESPONSE_TIMEOUT

    async def scenario():
        async with app.test_app() as test_app:
            response = await test_app.test_client().post(path, json=body)
            return response.status_code, await response.get_data(as_text=True)

    status, text = asyncio.run(scenario())
    return status, text, engine


def _events(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e]


def test_legacy_stream_outlives_the_response_timeout(tmp_path):
    status, text, engine = _stream(tmp_path, "/api/v1/generate", {
        "model": "tiny", "inputs": "hi", "max_new_tokens": TOKENS, "stream": True})
    events = _events(text)
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    frames = [json.loads(e) for e in events[:-1]]
    assert "".join(f["outputs"] for f in frames) == "x" * TOKENS
    assert frames[-1]["stop"] is True and all(f["stop"] is False for f in frames[:-1])
    assert engine.open_sessions == 0


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": "tiny", "prompt": "hi"}),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
])
def test_openai_streams_outlive_the_response_timeout(tmp_path, path, body):
    status, text, engine = _stream(tmp_path, path, {**body, "max_tokens": TOKENS, "stream": True})
    events = _events(text)
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert engine.open_sessions == 0
