"""Prompt prefix reuse over a real backend and the real local swarm, with the official ``openai`` SDK.

The tiny model is random, so its answers are compared with plain transformers' greedy decoding of the whole
prompt: a turn that continues a kept session must answer exactly as a fresh prefill would. Token-id prompts make
each turn extend the previous one's history exactly (the prompt and the tokens generated).
"""

from __future__ import annotations

import httpx
import openai
import pytest
from reliability_helpers import backend, backend_env

pytestmark = pytest.mark.timeout(240)

MAX_SESSIONS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory, swarm, test_registry):
    env = backend_env(swarm, test_registry, prompt_cache_sessions=MAX_SESSIONS, prompt_cache_tokens=8192,
                      prompt_cache_idle_timeout=120, max_sessions_per_client=64, max_idle_sessions_per_client=64)
    with backend(tmp_path_factory.mktemp("prompt-cache"), env) as server:
        yield server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def engine_sessions(server) -> int:
    """Sessions open in the engine (kept ones included), from /readyz."""
    return httpx.get(server.url + "/readyz", timeout=30).json()["sessions_open"]


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def stream_text_and_usage(stream) -> tuple[str, object]:
    chunks = list(stream)
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage


@pytest.mark.parametrize("stream", [False, True])
def test_each_turn_continues_the_last_one_and_answers_as_a_fresh_prefill(client, server, reference, stream):
    prompt = reference.encode(f"Turn by turn {'streamed' if stream else 'whole'}:")
    history: list[int] = []
    spared, cached = metric(server, "petals_chat_prompt_cache_tokens_total"), 0
    for turn in range(4):
        kwargs = {"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0}
        if stream:
            text, usage = stream_text_and_usage(client.completions.create(
                stream=True, stream_options={"include_usage": True}, **kwargs))
        else:
            result = client.completions.create(**kwargs)
            text, usage = result.choices[0].text, result.usage
        answer = reference.greedy_ids(prompt, 6)
        assert text == reference.decode(answer), f"turn {turn}"
        # the swarm held every token of the last turn but its last (Petals sends that one with the next input)
        assert usage.prompt_tokens_details.cached_tokens == (len(history) - 1 if history else 0), f"turn {turn}"
        assert usage.prompt_tokens == len(prompt)
        cached += usage.prompt_tokens_details.cached_tokens
        history = prompt + answer
        prompt = history + reference.encode(f" then {turn}")
    assert metric(server, "petals_chat_prompt_cache_tokens_total") - spared == cached > 0


def test_a_prompt_that_shares_too_little_with_every_kept_history_gets_a_fresh_session(client, reference):
    base = reference.encode("A shared beginning, then")
    client.completions.create(model="tiny", prompt=base, max_tokens=4, temperature=0)
    edited = base[:-1] + reference.encode(" but another end")  # under MIN_REWIND tokens in common: not rewound
    result = client.completions.create(model="tiny", prompt=edited, max_tokens=5, temperature=0)
    assert result.usage.prompt_tokens_details.cached_tokens == 0
    assert result.choices[0].text == reference.decode(reference.greedy_ids(edited, 5))


def test_a_prompt_that_diverges_late_rewinds_the_session_and_answers_as_a_fresh_prefill(client, reference):
    base = reference.encode("A long beginning that the next request shares almost all of, word for word, " * 2)
    client.completions.create(model="tiny", prompt=base, max_tokens=4, temperature=0)
    history = base + reference.greedy_ids(base, 4)
    edited = base[:-3] + reference.encode(" and then an edited ending")  # an edited last message
    common = next(i for i, (a, b) in enumerate(zip(edited, history, strict=False)) if a != b)
    assert common >= max(16, len(history) // 2)
    for turn in range(2):  # the rewound session, then the same session continued normally
        result = client.completions.create(model="tiny", prompt=edited, max_tokens=5, temperature=0)
        answer = reference.greedy_ids(edited, 5)
        assert result.choices[0].text == reference.decode(answer), f"turn {turn}"
        assert result.usage.prompt_tokens_details.cached_tokens == common - 1, f"turn {turn}"
        common = len(edited) + len(answer)  # the next prompt extends this whole answer
        edited = edited + answer + reference.encode(" more")


def test_chat_turns_report_their_cached_tokens_and_answer_the_same(client, reference):
    """A chat answer goes back as text: reuse needs it to tokenize as it was generated (checked, not assumed)."""
    messages = [{"role": "user", "content": "Hello there"}]
    first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    prompt = reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = reference.encode(prompt)
    answer = reference.greedy_ids(ids, 5, eos=False)
    assert second.choices[0].message.content == reference.decode(answer).split("<|im_end|>")[0]
    first_ids = reference.encode(reference.tokenizer.apply_chat_template(messages[:1], tokenize=False,
                                                                         add_generation_prompt=True))
    generated = reference.greedy_ids(first_ids, 5, eos=False)[:first.usage.completion_tokens]
    history = first_ids + generated
    common = next((i for i, (a, b) in enumerate(zip(ids, history, strict=False)) if a != b),
                  min(len(ids), len(history)))
    rewound = common >= max(16, len(history) // 2)  # else a new session (the rule of prompt_cache._common_prefix)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == (common - 1 if common == len(history) or rewound else 0)


def test_kept_sessions_stay_within_the_count_and_clients_hold_none(client, server, reference):
    for i in range(MAX_SESSIONS + 3):
        client.completions.create(model="tiny", prompt=f"Unrelated prompt number {i}", max_tokens=2, temperature=0)
    assert engine_sessions(server) == MAX_SESSIONS  # the least recently used were closed
    assert metric(server, "petals_chat_prompt_cache_sessions") == MAX_SESSIONS
    assert metric(server, "petals_chat_sessions_open") == 0  # kept sessions belong to no client

