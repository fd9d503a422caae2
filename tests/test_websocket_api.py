"""The WebSocket API over a real socket, a real Hypercorn backend and a real local Petals swarm."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

pytestmark = pytest.mark.timeout(180)

ORIGIN_FOREIGN = "https://elsewhere.example"


async def _connect(server, origin: str | None = None):
    headers = {"Origin": origin} if origin else {}
    return await websockets.connect(server.ws_url + "/api/v2/generate", additional_headers=headers,
                                    open_timeout=10)


async def _ask(ws, payload) -> dict:
    await ws.send(payload if isinstance(payload, (str, bytes)) else json.dumps(payload))
    return json.loads(await asyncio.wait_for(ws.recv(), 60))


async def _collect(ws, request: dict) -> list[dict]:
    await ws.send(json.dumps(request))
    replies = []
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
        replies.append(reply)
        if not reply["ok"] or reply["stop"]:
            return replies


def run(coro):
    return asyncio.run(coro)


def test_chat_page_flow_matches_transformers(live_server, reference):
    """open 512 -> generate(max_new_tokens=1, stop_sequence) -> per-token deltas -> stop."""
    prompt = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    prompt_ids = reference.encode(prompt)
    expected_ids = reference.greedy_ids(prompt_ids, 12, eos=False)
    # A stop sequence the tiny model will emit: the text of its 8th greedy token.
    stop_text = reference.decode(expected_ids[7:8])
    assert stop_text and stop_text not in reference.decode(expected_ids[:7])

    async def scenario():
        async with await _connect(live_server) as ws:
            assert await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 512}) == {
                "ok": True}
            return await _collect(ws, {"type": "generate", "inputs": prompt, "max_new_tokens": 1,
                                       "do_sample": 0, "stop_sequence": stop_text})

    replies = run(scenario())
    assert all(r["ok"] for r in replies), replies
    assert [r["stop"] for r in replies] == [False] * (len(replies) - 1) + [True]
    # one token per reply, except where a token ended inside a UTF-8 character (held, then sent together)
    assert sum(r["token_count"] for r in replies) == 8
    assert all(r["token_count"] == 1 or "\ufffd" in reference.decode(expected_ids[:8]) or r["token_count"] <= 4
               for r in replies)
    assert not any(r["outputs"].endswith("\ufffd") for r in replies[:-1])
    text = "".join(r["outputs"] for r in replies)
    assert text == reference.decode(expected_ids[:8])


def test_held_socket_across_turns(live_server, reference):
    """Several turns on one socket continue one session: the same as one long greedy run."""
    turn1, turn2 = "<|im_start|>user\nHi<|im_end|>\n", "<|im_start|>user\nAgain<|im_end|>\n"

    async def scenario():
        async with await _connect(live_server) as ws:
            await _ask(ws, {"type": "open_inference_session", "model": "tiny-alias", "max_length": 256})
            a = await _collect(ws, {"type": "generate", "inputs": turn1, "max_new_tokens": 5})
            b = await _collect(ws, {"type": "generate", "inputs": turn2, "max_new_tokens": 4})
            c = await _collect(ws, {"type": "generate", "max_new_tokens": 3})  # no inputs: continue
            return a, b, c

    a, b, c = run(scenario())
    assert len(a) == len(b) == len(c) == 1 and a[0]["stop"] and a[0]["token_count"] == 5
    ids1 = reference.encode(turn1)
    gen1 = reference.greedy_ids(ids1, 5, eos=False)
    assert a[0]["outputs"] == reference.decode(gen1)
    ids2 = ids1 + gen1 + reference.encode(turn2)
    gen2 = reference.greedy_ids(ids2, 4, eos=False)
    assert b[0]["outputs"] == reference.decode(gen2)
    gen3 = reference.greedy_ids(ids2 + gen2, 3, eos=False)
    assert c[0]["outputs"] == reference.decode(gen3)


def test_extra_stop_sequence_rewinds_to_stop_token(live_server, reference):
    prompt = "<|im_start|>user\nStop test<|im_end|>\n"
    ids = reference.encode(prompt)
    gen = reference.greedy_ids(ids, 6, eos=False)
    extra = reference.decode(gen[2:4])  # a two-token extra stop sequence, generated at tokens 3-4

    async def scenario():
        async with await _connect(live_server) as ws:
            await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 256})
            first = await _collect(ws, {"type": "generate", "inputs": prompt, "max_new_tokens": 1,
                                        "stop_sequence": "<|im_end|>", "extra_stop_sequences": [extra]})
            second = await _collect(ws, {"type": "generate", "inputs": "x", "max_new_tokens": 2})
            return first, second

    first, second = run(scenario())
    assert "".join(r["outputs"] for r in first) == reference.decode(gen[:4])
    assert first[-1]["stop"] and sum(r["token_count"] for r in first) == 4
    # rewound: the session continues as if <|im_end|> had been generated as the 4th token
    stop_id = reference.encode("<|im_end|>")
    assert len(stop_id) == 1
    context = ids + gen[:3] + stop_id + reference.encode("x")
    assert second[0]["outputs"] == reference.decode(reference.greedy_ids(context, 2, eos=False))


def test_maximum_length_exceeded_when_budget_runs_out(live_server, reference):
    prompt = "<|im_start|>user\nLong<|im_end|>\n"
    n = len(reference.encode(prompt))

    async def scenario():
        async with await _connect(live_server) as ws:
            await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": n + 3})
            replies = await _collect(ws, {"type": "generate", "inputs": prompt, "max_new_tokens": 1,
                                          "stop_sequence": "never-generated-sequence"})
            up_front = await _ask(ws, {"type": "generate", "inputs": "more", "max_new_tokens": 5})
            return replies, up_front

    replies, up_front = run(scenario())
    assert [r["ok"] for r in replies] == [True, True, True, False]
    assert sum(r["token_count"] for r in replies[:-1]) == 3
    assert "Maximum length exceeded" in replies[-1]["traceback"]
    assert "Maximum length exceeded" in up_front["traceback"]


BAD_REQUESTS = [
    ("{not json", "malformed JSON"),
    (b"\x00\x01binary", "binary frames are not supported"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1}, "first request must be of type"),
    ({"type": "hello"}, "unknown request type 'hello'"),
    ([1, 2, 3], "must be a JSON object"),
    ({"type": "open_inference_session", "model": "no-such-model", "max_length": 10}, "Unknown model"),
    ({"type": "open_inference_session", "model": "tiny"}, "'max_length' is required"),
    ({"type": "open_inference_session", "model": "tiny", "max_length": "10"}, "invalid 'max_length'"),
    ({"type": "open_inference_session", "model": "tiny", "max_length": 1.5}, "invalid 'max_length'"),
    ({"type": "open_inference_session", "model": "tiny", "max_length": -4}, "invalid 'max_length'"),
    ({"type": "open_inference_session", "model": "tiny", "max_length": 10 ** 30}, "invalid 'max_length'"),
    ({"type": "open_inference_session", "model": "tiny", "max_length": 5000}, "exceeds the model's max_session_length"),
]


def test_bad_open_requests_get_one_line_errors_and_the_socket_survives(live_server):
    async def scenario():
        async with await _connect(live_server) as ws:
            answers = [await _ask(ws, payload) for payload, _ in BAD_REQUESTS]
            # the same connection still works afterwards
            opened = await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 64})
            reply = await _collect(ws, {"type": "generate", "inputs": "ok", "max_new_tokens": 2})
            return answers, opened, reply

    answers, opened, reply = run(scenario())
    for (payload, phrase), answer in zip(BAD_REQUESTS, answers, strict=True):
        assert answer["ok"] is False, payload
        assert phrase in answer["traceback"], (payload, answer)
        assert "\n" not in answer["traceback"] and "Traceback" not in answer["traceback"]
    assert opened == {"ok": True}
    assert reply[-1]["ok"] and reply[-1]["token_count"] == 2


BAD_GENERATES = [
    ({"type": "generate", "inputs": "x", "max_new_tokens": "5"}, "invalid 'max_new_tokens'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 0}, "invalid 'max_new_tokens'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 10 ** 9}, "above this server's limit"),
    ({"type": "generate", "inputs": "x"}, "one of max_new_tokens or max_length is required"),
    ({"type": "generate", "inputs": 5, "max_new_tokens": 1}, "invalid 'inputs'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "temperature": "hot"}, "invalid 'temperature'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "temperature": -1}, "invalid 'temperature'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "top_p": 2}, "invalid 'top_p'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "top_k": 1.5}, "invalid 'top_k'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "do_sample": "yes"}, "invalid 'do_sample'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "repetition_penalty": None, "stop_sequence": 3},
     "invalid 'stop_sequence'"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "stop_sequence": "two words here",
      "extra_stop_sequences": ["</s>"]}, "exactly 1 token"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "extra_stop_sequences": ["</s>"]},
     "extra_stop_sequences require stop_sequence"),
    ({"type": "generate", "inputs": "x", "max_new_tokens": 1, "extra_stop_sequences": "</s>",
      "stop_sequence": "<|im_end|>"}, "invalid 'extra_stop_sequences'"),
]


def test_bad_generate_requests_keep_the_session(live_server, reference):
    async def scenario():
        async with await _connect(live_server) as ws:
            await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 128})
            answers = [await _ask(ws, payload) for payload, _ in BAD_GENERATES]
            reply = await _collect(ws, {"type": "generate", "inputs": "hello", "max_new_tokens": 3})
            return answers, reply

    answers, reply = run(scenario())
    for (payload, phrase), answer in zip(BAD_GENERATES, answers, strict=True):
        assert answer["ok"] is False and phrase in answer["traceback"], (payload, answer)
        assert "\n" not in answer["traceback"]
    # the session is intact: the reply equals a fresh greedy run from "hello"
    ids = reference.encode("hello")
    assert reply[0]["outputs"] == reference.decode(reference.greedy_ids(ids, 3, eos=False))


def test_private_model_only_for_own_origin(live_server):
    async def scenario():
        async with await _connect(live_server, origin=ORIGIN_FOREIGN) as ws:
            foreign = await _ask(ws, {"type": "open_inference_session", "model": "tiny-private", "max_length": 32})
        async with await _connect(live_server, origin=live_server.url) as ws:
            own = await _ask(ws, {"type": "open_inference_session", "model": "tiny-private", "max_length": 32})
        return foreign, own

    foreign, own = run(scenario())
    assert foreign["ok"] is False and "do not provide public API" in foreign["traceback"]
    assert own == {"ok": True}




def test_abrupt_disconnect_mid_generation_frees_the_session(live_server):
    assert live_server.wait_for_sessions(0) == 0

    async def scenario():
        ws = await _connect(live_server)
        await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 2000})
        await ws.send(json.dumps({"type": "generate", "inputs": "go", "max_new_tokens": 1,
                                  "stop_sequence": "never-generated-sequence"}))
        await ws.recv()  # generation is running
        assert live_server.open_sessions() == 1
        ws.transport.abort()  # no close frame: an abrupt disconnect

    run(scenario())
    assert live_server.wait_for_sessions(0) == 0
    # the server still serves new connections
    async def again():
        async with await _connect(live_server) as ws:
            return await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 16})
    assert run(again()) == {"ok": True}


def test_idle_connection_is_closed_after_step_timeout(tmp_path, swarm, test_registry):
    from reliability_helpers import backend, backend_env

    with backend(tmp_path, backend_env(swarm, test_registry, step_timeout="1.5")) as server:
        async def scenario():
            async with await _connect(server) as ws:
                await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 16})
                started = time.monotonic()
                notice = json.loads(await asyncio.wait_for(ws.recv(), 10))
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                return notice, time.monotonic() - started

        notice, waited = run(scenario())
        assert notice["ok"] is False and "no request for 1.5 seconds" in notice["traceback"]
        assert 1.0 < waited < 8
        assert server.wait_for_sessions(0) == 0


def test_websocket_compression_is_declined_by_default(live_server):
    """Token frames are tiny: the server declines permessage-deflate (see backend/ws_compression.py)."""
    async def scenario():
        async with await _connect(live_server) as ws:  # the client offers permessage-deflate
            opened = await _ask(ws, {"type": "open_inference_session", "model": "tiny", "max_length": 16})
            return ws.response.headers.get("Sec-WebSocket-Extensions"), opened

    extensions, opened = run(scenario())
    assert extensions is None and opened == {"ok": True}
