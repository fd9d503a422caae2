"""Load clients for the backend's APIs: WebSocket (as the chat page), HTTP, HTTP SSE, OpenAI SSE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
from websockets.asyncio.client import connect

from .stats import Stream

MAX_LENGTH_EXCEEDED = "Maximum length exceeded"  # the expected end of a budget-bounded chat round
STOP = "<|im_end|>"  # the chat page's stop sequence; the benchmark prompt never produces it
EXTRA_STOPS = ["<|endoftext|>"]


class WsChat:
    """One chat-page socket: open a session, then generate with max_new_tokens 1 + stop_sequence."""

    def __init__(self, ws_url: str, model: str):
        self.url = ws_url + "/api/v2/generate"
        self.model = model
        self.ws = None

    async def open(self, max_length: int) -> None:
        self.ws = await connect(self.url, max_size=None, ping_interval=None, open_timeout=120, close_timeout=5)
        await self.ws.send(json.dumps({"type": "open_inference_session", "model": self.model,
                                       "max_length": max_length}))
        reply = json.loads(await self.ws.recv())
        if not reply.get("ok"):
            raise RuntimeError(f"open_inference_session failed: {reply.get('traceback')}")

    async def generate(self, prompt: str, stream: Stream) -> Stream:
        """Generate until the session's budget ends the round (the stop sequence never occurs)."""
        assert self.ws is not None
        await self.ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 1,
                                       "stop_sequence": STOP, "extra_stop_sequences": EXTRA_STOPS,
                                       "do_sample": False}))
        stream.sent = time.perf_counter()
        while True:
            reply = json.loads(await self.ws.recv())
            now = time.perf_counter()
            if not reply.get("ok"):
                message = str(reply.get("traceback", ""))
                if not message.startswith(MAX_LENGTH_EXCEEDED):  # the budget end is the expected end
                    stream.error = message.splitlines()[0][:200]
                return stream
            stream.add(now, int(reply.get("token_count", 0)))
            if reply.get("stop"):
                return stream

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None


async def ws_stream(ws_url: str, model: str, prompt: str, prompt_tokens: int, new_tokens: int) -> Stream:
    stream = Stream()
    chat = WsChat(ws_url, model)
    try:
        await chat.open(prompt_tokens + new_tokens)
        await chat.generate(prompt, stream)
    except Exception as e:
        stream.error = f"{type(e).__name__}: {e}"[:200]
    finally:
        await chat.close()
    return stream


async def ws_concurrent(ws_url: str, model: str, prompt: str, prompt_tokens: int, new_tokens: int,
                        sessions: int) -> list[Stream]:
    """``sessions`` sockets, each with an open session, all sending their generate request together."""
    streams = [Stream() for _ in range(sessions)]
    chats = [WsChat(ws_url, model) for _ in range(sessions)]
    opened = await asyncio.gather(*(c.open(prompt_tokens + new_tokens) for c in chats), return_exceptions=True)
    go = asyncio.Event()

    async def run(chat: WsChat, stream: Stream, error) -> None:
        if isinstance(error, BaseException):
            stream.error = f"open: {type(error).__name__}: {error}"[:200]
            return
        await go.wait()
        try:
            await chat.generate(prompt, stream)
        except Exception as e:
            stream.error = f"{type(e).__name__}: {e}"[:200]

    tasks = [asyncio.create_task(run(c, s, e)) for c, s, e in zip(chats, streams, opened, strict=False)]
    await asyncio.sleep(0.05)
    go.set()
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close() for c in chats), return_exceptions=True)
    return streams


async def http_generate(url: str, model: str, prompt: str, new_tokens: int,
                        count_tokens: Callable[[str], int]) -> Stream:
    """POST /api/v1/generate (no streaming): one arrival with every token at the end."""
    stream = Stream()
    async with httpx.AsyncClient(timeout=300) as client:
        try:
            stream.sent = time.perf_counter()
            r = await client.post(url + "/api/v1/generate", json={"model": model, "inputs": prompt,
                                                                   "max_new_tokens": new_tokens,
                                                                   "do_sample": False})
            body = r.json()
            if r.status_code != 200 or not body.get("ok"):
                stream.error = f"HTTP {r.status_code}: {str(body)[:200]}"
            else:
                stream.add(time.perf_counter(), count_tokens(body["outputs"]))
        except Exception as e:
            stream.error = f"{type(e).__name__}: {e}"[:200]
    return stream


async def _sse(client: httpx.AsyncClient, url: str, payload: dict, stream: Stream,
               tokens_of: Callable[[dict], int]) -> dict | None:
    """POST and read Server-Sent Events; returns the last JSON event (for usage)."""
    last = None
    stream.sent = time.perf_counter()
    async with client.stream("POST", url, json=payload) as r:
        if r.status_code != 200:
            stream.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            return None
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            now = time.perf_counter()
            if event.get("ok") is False or "error" in event:
                stream.error = str(event.get("traceback") or event.get("error"))[:200]
                break
            stream.add(now, tokens_of(event))
            last = event
    return last


async def http_sse(url: str, model: str, prompt: str, new_tokens: int) -> Stream:
    """POST /api/v1/generate with ``stream: true``: one event per token."""
    stream = Stream()
    async with httpx.AsyncClient(timeout=300) as client:
        try:
            await _sse(client, url + "/api/v1/generate",
                       {"model": model, "inputs": prompt, "max_new_tokens": new_tokens, "do_sample": False,
                        "stream": True}, stream, lambda e: int(e.get("token_count", 0)))
        except Exception as e:
            stream.error = f"{type(e).__name__}: {e}"[:200]
    return stream


async def openai_available(url: str) -> str | None:
    """None when the OpenAI API answers; else why this row is skipped."""
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            r = await client.get(url + "/v1/models")
        except Exception as e:
            return f"GET /v1/models failed: {type(e).__name__}"
    if r.status_code != 200:
        return f"GET /v1/models answered HTTP {r.status_code}: the OpenAI API is not in this backend"
    return None


async def openai_sse(url: str, model: str, prompt: str, new_tokens: int) -> Stream:
    """POST /v1/completions with ``stream: true`` (temperature 0); a text event counts one token."""
    stream = Stream()

    def tokens_of(event: dict) -> int:
        choices = event.get("choices") or [{}]
        return 1 if choices[0].get("text") else 0

    async with httpx.AsyncClient(timeout=300) as client:
        try:
            last = await _sse(client, url + "/v1/completions",
                              {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
                               "stream": True, "stream_options": {"include_usage": True}}, stream, tokens_of)
            usage = (last or {}).get("usage") or {}
            missing = int(usage.get("completion_tokens") or 0) - stream.tokens
            if missing > 0 and stream.arrivals:  # several tokens in one event (held UTF-8 text)
                t, n = stream.arrivals[-1]
                stream.arrivals[-1] = (t, n + missing)
        except Exception as e:
            stream.error = f"{type(e).__name__}: {e}"[:200]
    return stream


async def idle_sessions(ws_url: str, model: str, count: int, max_length: int, keep: list) -> int:
    """Open ``count`` more sockets, each with an open inference session; append them to ``keep``."""
    gate = asyncio.Semaphore(32)
    errors = 0

    async def one() -> None:
        nonlocal errors
        async with gate:
            chat = WsChat(ws_url, model)
            try:
                await chat.open(max_length)
                keep.append(chat)
            except Exception:
                errors += 1
                await chat.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return errors
