"""Batched decoding on a real local swarm (the session's tiny float32 swarm batches: it is the default).

Many WebSocket chat sessions at once, of different lengths, joining and leaving between steps, one cancelled
and one running out of its budget: every other answer equals plain transformers token for token, and the
server's log shows that steps of several sessions really ran as one forward.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import websockets

pytestmark = pytest.mark.timeout(240)


async def _open(server, max_length: int):
    ws = await websockets.connect(server.ws_url + "/api/v2/generate", open_timeout=10)
    await ws.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": max_length}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 60)) == {"ok": True}
    return ws


async def _generate(ws, prompt: str, tokens: int) -> tuple[str, str | None]:
    """Stream ``tokens`` greedy tokens one frame each; returns (text, error line or None)."""
    await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 1, "do_sample": 0,
                              "stop_sequence": "\x00never\x00", "extra_stop_sequences": []}))
    text, count = "", 0
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if not reply["ok"]:
            return text, reply["traceback"]
        text += reply["outputs"]
        count += reply["token_count"]
        if reply["stop"] or count >= tokens:
            return text, None


def _largest_batch(log_path: Path) -> int:
    sizes = [int(n) for n in re.findall(r"Batched decoding: (\d+) sessions in one forward", log_path.read_text())]
    return max(sizes, default=1)


def test_concurrent_sessions_equal_transformers_and_run_batched(live_server, swarm, reference):
    prompts = [f"<|im_start|>user\n{'Tell me more. ' * (i + 1)}<|im_end|>\n<|im_start|>assistant\n"
               for i in range(8)]
    lengths = [6 + 3 * i for i in range(8)]  # sessions leave at different steps
    expected = [reference.decode(reference.greedy_ids(reference.encode(p), n, eos=False))
                for p, n in zip(prompts, lengths, strict=True)]

    async def one(i: int, start: asyncio.Event):
        ws = await _open(live_server, 512)
        try:
            if i % 2:  # odd sessions join a few steps later
                await start.wait()
            return await _generate(ws, prompts[i], lengths[i])
        finally:
            await ws.close()

    async def scenario():
        start = asyncio.Event()
        tasks = [asyncio.create_task(one(i, start)) for i in range(8)]
        await asyncio.sleep(0)  # let the even sessions send their first request
        start.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    for (text, error), want in zip(results, expected, strict=True):
        assert error is None
        assert text == want
    assert _largest_batch(Path(swarm.log_file.name)) >= 2, "no two sessions' steps ever shared a forward"


def test_a_cancelled_and_an_exhausted_session_do_not_disturb_their_batch_mates(live_server, reference):
    prompt = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    n_prompt = len(reference.encode(prompt))
    want = reference.decode(reference.greedy_ids(reference.encode(prompt), 24, eos=False))

    async def steady():
        ws = await _open(live_server, 512)
        try:
            return await _generate(ws, prompt, 24)
        finally:
            await ws.close()

    async def cancelled():
        ws = await _open(live_server, 512)
        await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 1, "do_sample": 0,
                                  "stop_sequence": "\x00never\x00"}))
        for _ in range(3):
            await asyncio.wait_for(ws.recv(), 60)
        await ws.close()  # gone mid-answer, its step possibly queued with the others

    async def exhausted():
        ws = await _open(live_server, n_prompt + 4)  # room for 4 tokens only
        try:
            await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 1, "do_sample": 0,
                                      "stop_sequence": "\x00never\x00"}))
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if not reply["ok"] or reply["stop"]:
                    return reply
        finally:
            await ws.close()

    async def scenario():
        return await asyncio.gather(steady(), steady(), cancelled(), exhausted(), steady())

    a, b, _, last, c = asyncio.run(scenario())
    for text, error in (a, b, c):
        assert error is None
        assert text == want
    assert last.get("stop") is True or "Maximum length exceeded" in last.get("traceback", "")
    live_server.wait_for_sessions(0)
