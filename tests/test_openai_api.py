"""The OpenAI-compatible API with the official ``openai`` client, over real Hypercorn and a real local swarm.

The tiny model is random: its answers are gibberish, so every check compares against
references (plain transformers greedy decoding, the WebSocket API, the tokenizer's counts).
A few error paths that need a model that never loads, or a swarm failing mid-stream, run
in-process with a fake engine.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import websockets
from fake_engine import FakeEngine, in_process_app

pytestmark = pytest.mark.timeout(180)

CHAT_STOPS = ("<|im_end|>", "<|endoftext|>")  # the "tiny" model's stop token and extra stop sequence


def _client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                         timeout=60, **kwargs)


@pytest.fixture(scope="module")
def client(live_server):
    return _client(live_server)


def chat_prompt(reference, messages: list[dict]) -> str:
    """The template renders its own default system message (the registry's "You are a test." is not used)."""
    return reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def expected(reference, prompt: str, max_tokens: int, stops=CHAT_STOPS) -> tuple[str, int, str]:
    """Greedy answer as the API must give it: (text before the first stop, tokens generated, finish_reason)."""
    ids = reference.greedy_ids(reference.encode(prompt), max_tokens, eos=False)
    for n in range(1, len(ids) + 1):
        text = reference.decode(ids[:n])
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[:min(hits)], n, "stop"
    return reference.decode(ids), len(ids), "length"


def stream_parts(stream) -> tuple[list, str]:
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content or "") if hasattr(c.choices[0], "delta") else c.choices[0].text
                   for c in chunks if c.choices)
    return chunks, text


def test_models_lists_public_models_and_private_ones_for_the_own_origin(live_server, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    own = _client(live_server, default_headers={"Origin": live_server.url})
    assert [m.id for m in own.models.list()] == ["tiny", "tiny-private"]
    card = own.models.list().data[0]
    assert card.object == "model" and card.owned_by == "Tiny" and card.created > 0


def test_chat_completion_greedy_matches_transformers_websocket_and_tokenizer(live_server, client, reference):
    messages = [{"role": "user", "content": "Hello there"}]
    prompt = chat_prompt(reference, messages)
    text, n_tokens, finish = expected(reference, prompt, 8)
    result = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=8,
                                            frequency_penalty=0, user="someone", extra_body={"metadata": {"a": "b"},
                                                                                        "store": False,
                                                                                        "logit_bias": None})
    assert result.id.startswith("chatcmpl-") and result.object == "chat.completion" and result.model == "tiny"
    assert abs(result.created - time.time()) < 60
    choice = result.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", text, finish)
    assert result.usage.prompt_tokens == len(reference.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert result.usage.completion_tokens == n_tokens
    assert result.usage.total_tokens == result.usage.prompt_tokens + n_tokens

    async def over_websocket() -> str:
        async with websockets.connect(live_server.ws_url + "/api/v2/generate", open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": 256}))
            assert json.loads(await ws.recv())["ok"]
            await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 8}))
            return json.loads(await asyncio.wait_for(ws.recv(), 60))["outputs"]

    ws_text = asyncio.run(over_websocket())
    cut = min([ws_text.find(s) for s in CHAT_STOPS if s in ws_text], default=len(ws_text))
    assert ws_text[:cut] == choice.message.content


def test_chat_streaming_equals_the_plain_answer(client, reference):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Stream it"},
                {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Go"}]
    text, n_tokens, finish = expected(reference, chat_prompt(reference, messages), 10)
    messages[-1] = {"role": "user", "content": [{"type": "text", "text": "G"}, {"type": "text", "text": "o"}]}
    stream = client.chat.completions.create(model="tiny-alias", messages=messages, temperature=0,
                                            max_completion_tokens=10, stream=True,
                                            stream_options={"include_usage": True})
    chunks, streamed = stream_parts(stream)
    assert streamed == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_tokens


def test_text_completion_plain_and_streamed(client, reference):
    prompt = "Once upon a time"
    text, n_tokens, finish = expected(reference, prompt, 6)
    result = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0)
    assert result.id.startswith("cmpl-") and result.object == "text_completion"
    assert (result.choices[0].text, result.choices[0].finish_reason) == (text, finish)
    assert result.usage.prompt_tokens == len(reference.encode(prompt)) and result.usage.completion_tokens == n_tokens
    listed = client.completions.create(model="tiny", prompt=[prompt], max_tokens=6, temperature=0)
    assert listed.choices[0].text == text
    chunks, streamed = stream_parts(client.completions.create(model="tiny", prompt=prompt, max_tokens=6,
                                                              temperature=0, stream=True))
    assert streamed == text and chunks[-1].choices[0].finish_reason == finish
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_max_tokens_ends_with_finish_reason_length(client, reference):
    prompt = "Count:"
    _text, _n_tokens, finish = expected(reference, prompt, 3)
    assert finish == "length"  # (the tiny model's greedy start has no stop sequence)
    result = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0)
    assert result.choices[0].finish_reason == "length" and result.usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_answer_and_never_appear(client, reference, stream):
    prompt = "The stop test"
    ids = reference.greedy_ids(reference.encode(prompt), 8, eos=False)
    # a stop string spanning tokens 4-5: its first part must be held back, then dropped
    stop = reference.decode(ids[3:5])
    before = reference.decode(ids[:3])
    assert stop.strip() and stop not in before
    kwargs = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0, "stop": ["never-there", stop]}
    if stream:
        chunks, text = stream_parts(client.completions.create(stream=True, **kwargs))
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason)
    else:
        result = client.completions.create(**kwargs)
        text, finish = result.choices[0].text, result.choices[0].finish_reason
        assert result.usage.completion_tokens == 5
    assert text == before and finish == "stop"


def test_seeded_sampling_is_reproducible(client):
    def sample(seed):
        return client.completions.create(model="tiny", prompt="Random", max_tokens=6, temperature=1.0,
                                         top_p=0.95, seed=seed).choices[0].text

    assert sample(1234) == sample(1234)


ERRORS = [
    # (SDK method, arguments, status, param, phrase)
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 9}, 400, "n",
     "less than or equal to 8"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature",
     "less than or equal to 2"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5}, 400,
     "presence_penalty", "repetition_penalty"),
    ("chat", {"model": "tiny", "messages": []}, 400, "messages", "at least 1"),
    ("chat", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0]", "'user'"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "extra_body": {"unknown_field": 1}},
     400, "unknown_field", "'unknown_field' is not supported"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x", "name": "bob"}]}, 400,
     "messages[0].name", "not supported"),
    ("completions", {"model": "tiny", "prompt": "x", "suffix": "y"}, 400, "suffix", "not supported"),
    ("completions", {"model": "tiny", "prompt": "x", "max_tokens": 10 ** 6}, 400, "max_tokens", "server's limit"),
    ("completions", {"model": "tiny", "prompt": "x", "max_tokens": 2048}, 400, "max_tokens", "Maximum length exceeded"),
    ("completions", {"model": "tiny", "prompt": ["a", "b"], "stream": True}, 400, "prompt", "cannot be streamed"),
    ("completions", {"model": "tiny", "prompt": [[]]}, 400, "prompt", "invalid 'prompt'"),
    ("completions", {"model": "tiny", "prompt": "x", "logprobs": 21}, 400, "logprobs", "less than or equal to 20"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "request",
     "requires logprobs"),
    ("completions", {"model": "tiny", "prompt": ""}, 400, "prompt", "must not be empty"),
    ("completions", {"model": "no-such-model", "prompt": "x"}, 404, "model", "Unknown model"),
    ("completions", {"model": "tiny-private", "prompt": "x"}, 403, "model", "do not provide public API"),
    ("completions", {"model": "tiny", "prompt": "word " * 2100, "max_tokens": 1}, 413, "prompt", "prompt is too long"),
]


@pytest.mark.parametrize("method,kwargs,status,param,phrase", ERRORS, ids=[f"{e[2]}-{e[3]}" for e in ERRORS])
def test_errors_in_openai_shape(client, method, kwargs, status, param, phrase):
    create = client.chat.completions.create if method == "chat" else client.completions.create
    with pytest.raises(openai.APIStatusError) as caught:
        create(**kwargs)
    error = caught.value
    assert error.status_code == status
    body = error.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["param"] == param and phrase in body["message"], body
    assert body["type"] == {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error")


def test_malformed_and_oversized_bodies(live_server):
    url = live_server.url + "/v1/chat/completions"
    bad = httpx.post(url, content=b"{nope", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]["message"]
    not_object = httpx.post(url, json=[1, 2])
    assert not_object.status_code == 400 and not_object.json()["error"]["type"] == "invalid_request_error"
    huge = httpx.post(url, content=b" " * (5 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"


def test_legacy_http_api_streams_server_sent_events(live_server, reference):
    prompt = "Legacy stream"
    params = {"model": "tiny", "inputs": prompt, "max_new_tokens": 5}
    plain = httpx.post(live_server.url + "/api/v1/generate", json=params, timeout=60).json()
    with httpx.stream("POST", live_server.url + "/api/v1/generate", json={**params, "stream": True},
                      timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e) for e in events[:-1]]
    assert all(d["ok"] for d in deltas) and [d["stop"] for d in deltas][-1] is True
    assert sum(d["token_count"] for d in deltas) == 5
    expected_text = reference.decode(reference.greedy_ids(reference.encode(prompt), 5))
    assert "".join(d["outputs"] for d in deltas) == plain["outputs"] == expected_text




def test_client_disconnect_mid_stream_closes_the_session(live_server):
    assert live_server.wait_for_sessions(0) == 0
    body = {"model": "tiny", "prompt": "A long story", "max_tokens": 1900, "temperature": 0, "stream": True,
            "stop": "never-generated-sequence"}
    with httpx.stream("POST", live_server.url + "/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert all(not line or line.startswith("data: {") for line in received)
        assert live_server.open_sessions() == 1  # still generating
    # leaving the block closes the connection mid-stream
    started = time.monotonic()
    assert live_server.wait_for_sessions(0, timeout=10) == 0
    assert time.monotonic() - started < 5
    tokens = live_server.metrics_value("petals_chat_tokens_generated_total")
    time.sleep(0.5)
    assert live_server.metrics_value("petals_chat_tokens_generated_total") == tokens  # generation stopped


def test_api_keys_busy_and_the_own_origin_exemption(tmp_path, swarm, test_registry):
    from reliability_helpers import backend, backend_env

    with backend(tmp_path, backend_env(swarm, test_registry, api_keys="k1 k2", max_sessions=1,
                                       queue_timeout=0)) as server:  # busy at once, no waiting in line
        ask = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
        for key in ("unused", "k3", "K1"):
            with pytest.raises(openai.AuthenticationError) as caught:
                _client(server, api_key=key).chat.completions.create(**ask)
            assert caught.value.response.json()["error"]["type"] == "authentication_error"
            assert caught.value.response.headers["WWW-Authenticate"] == "Bearer"
        no_header = httpx.get(server.url + "/v1/models")
        assert no_header.status_code == 401 and "Missing API key" in no_header.json()["error"]["message"]
        assert _client(server, api_key="k2").chat.completions.create(**ask).choices[0].finish_reason
        assert [m.id for m in _client(server, api_key="k1").models.list()] == ["tiny"]
        own = _client(server, default_headers={"Origin": server.url})  # the web page needs no key
        assert own.completions.create(model="tiny-private", prompt="x", max_tokens=1).usage.completion_tokens == 1
        preflight = httpx.options(server.url + "/v1/chat/completions", headers={
            "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200 and "authorization" in preflight.headers[
            "Access-Control-Allow-Headers"].lower()

        legacy = {"model": "tiny", "inputs": "x", "max_new_tokens": 1}
        refused = httpx.post(server.url + "/api/v1/generate", json=legacy)
        assert refused.status_code == 401 and refused.json()["ok"] is False and "API key" in refused.json()[
            "traceback"]
        accepted = httpx.post(server.url + "/api/v1/generate", json=legacy, headers={"Authorization": "Bearer k1"},
                              timeout=60)
        assert accepted.status_code == 200 and accepted.json()["ok"] is True
        assert httpx.get(server.url + "/api/v1/models").status_code == 200  # the registry stays open

        async def busy():
            # the only session slot is held by a WebSocket session: the API answers 429
            async with websockets.connect(server.ws_url + "/api/v2/generate", open_timeout=10) as ws:
                await ws.send(json.dumps({"type": "open_inference_session", "model": "tiny", "max_length": 16}))
                assert json.loads(await ws.recv())["ok"]
                async with httpx.AsyncClient(timeout=30) as http:
                    return await http.post(server.url + "/v1/chat/completions", json=ask,
                                           headers={"Authorization": "Bearer k1"})

        answer = asyncio.run(busy())
        assert answer.status_code == 429
        assert answer.json()["error"]["type"] == "rate_limit_error" and "Server is busy" in answer.json()["error"][
            "message"]


# ---- in-process: a model that never loads, a swarm failing mid-stream ---------------------------

def _in_process(engine, test_registry):
    return in_process_app(engine, test_registry)


def test_not_ready_is_503(test_registry):
    async def scenario():
        app = _in_process(FakeEngine(ready=False), test_registry)
        async with app.test_app() as test_app:
            response = await test_app.test_client().post("/v1/completions", json={"model": "tiny", "prompt": "x"})
            return response.status_code, await response.get_json()

    status, body = asyncio.run(scenario())
    assert status == 503 and body["error"]["type"] == "service_unavailable_error"
    assert body["error"]["code"] == "model_not_ready"


def test_swarm_failure_mid_stream_is_an_error_event_then_done(test_registry):
    engine = FakeEngine(ready=True)

    async def scenario():
        app = _in_process(engine, test_registry)
        app.config["RESPONSE_TIMEOUT"] = 0.1  # a stream is exempt: it must not be cut
        async with app.test_app() as test_app:
            response = await test_app.test_client().post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": True})
            return await response.get_data(as_text=True)

    events = [e[len("data: "):] for e in asyncio.run(scenario()).split("\n\n") if e]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads[1:-1]) == "ab"
    assert payloads[-1]["error"]["type"] == "service_unavailable_error"
    assert payloads[-1]["error"]["code"] == "swarm_error" and "went away" in payloads[-1]["error"]["message"]
    assert engine.open_sessions == 0


def test_every_unknown_field_is_refused_by_name_and_the_harmless_ones_are_accepted(test_registry):
    from backend.openai.schemas import IGNORED_FIELDS

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    unknown = {"audio": {"voice": "alloy"}, "modalities": ["text", "audio"], "prediction": {"type": "content"},
               "web_search_options": {}, "reasoning_effort": "low", "functions": [{"name": "f"}],
               "some_future_field": 1}

    async def scenario():
        app = _in_process(FakeEngine(ready=True), test_registry)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            refused = {}
            for field, value in unknown.items():
                response = await client.post("/v1/chat/completions", json={**chat, field: value})
                refused[field] = (response.status_code, (await response.get_json())["error"])
            ignored = {field: "x" for field in IGNORED_FIELDS} | {"metadata": {"k": "v"}, "store": True}
            accepted = await client.post("/v1/chat/completions", json={**chat, **ignored, "audio": None})
            return refused, accepted.status_code

    refused, accepted = asyncio.run(scenario())
    for field, (status, error) in refused.items():
        assert status == 400 and error["param"] == field and f"'{field}' is not supported" in error["message"]
    assert accepted == 503  # not refused: the fake engine then fails like a swarm that went away


# ---- logprobs, echo, token-id prompts -------------------------------------------------------------

@pytest.fixture(scope="module")
def ref_logprobs(tiny_model):
    """log_softmax of plain transformers' logits at every position of ``ids``: the truth for logprobs."""
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32).eval()

    def at(ids: list[int]):
        with torch.inference_mode():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)

    return at


def test_chat_logprobs_are_the_models_and_stream_the_same(client, reference, ref_logprobs):
    messages = [{"role": "user", "content": "Logprobs please"}]
    prompt_ids = reference.encode(chat_prompt(reference, messages))
    kwargs = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 5, "logprobs": True,
              "top_logprobs": 3}
    result = client.chat.completions.create(**kwargs)
    content = result.choices[0].logprobs.content
    ids = reference.greedy_ids(prompt_ids, 5, eos=False)[:len(content)]
    truth = ref_logprobs(prompt_ids + ids)
    assert "".join(c.token for c in content) == result.choices[0].message.content
    for i, (entry, token_id) in enumerate(zip(content, ids, strict=True)):
        row = truth[len(prompt_ids) - 1 + i]
        assert entry.logprob == pytest.approx(float(row[token_id]), abs=1e-3)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(float(row.max()),
                                                                                                 abs=1e-3)
        assert entry.bytes == list(entry.token.encode())
    chunks, _ = stream_parts(client.chat.completions.create(stream=True, **kwargs))
    streamed = [c for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [(c.token, round(c.logprob, 4)) for c in streamed] == [(c.token, round(c.logprob, 4)) for c in content]
    plain = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_completion_echo_logprobs_of_token_id_prompts_as_lm_eval_asks(client, reference, ref_logprobs):
    ids = reference.encode("The capital of France is Paris")
    truth = ref_logprobs(ids)
    for prompt in ([ids], ids):  # a batch of one token-id prompt, and the bare token ids
        result = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, temperature=0, logprobs=1,
                                           echo=True, seed=1234)
        logprobs = result.choices[0].logprobs
        assert len(logprobs.token_logprobs) == len(ids) + 1 and logprobs.token_logprobs[0] is None
        for i in range(1, len(ids)):
            assert logprobs.token_logprobs[i] == pytest.approx(float(truth[i - 1, ids[i]]), abs=1e-3)
            assert max(logprobs.top_logprobs[i].values()) == pytest.approx(float(truth[i - 1].max()), abs=1e-3)
        assert result.choices[0].text.startswith(reference.decode(ids))
        assert logprobs.text_offset[:2] == [0, len(logprobs.tokens[0])]
    only_prompt = client.completions.create(model="tiny", prompt="Just the prompt", max_tokens=0, echo=True,
                                            logprobs=0)
    assert only_prompt.choices[0].text == "Just the prompt" and only_prompt.usage.completion_tokens == 0
    assert "".join(only_prompt.choices[0].logprobs.tokens) == "Just the prompt"


def test_a_batch_of_prompts_answers_one_choice_each(client, reference):
    prompts = ["Once upon a time", "Count:"]
    result = client.completions.create(model="tiny", prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in result.choices] == [0, 1]
    assert [c.text for c in result.choices] == [expected(reference, p, 4)[0] for p in prompts]
