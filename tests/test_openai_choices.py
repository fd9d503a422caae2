"""``n`` choices, ``GET /v1/models/{id}`` and a stable ``created``, with the ``openai`` SDK over the real swarm.

The tiny model is random: answers are compared with plain transformers' greedy decoding (``expected``).
"""

from __future__ import annotations

import collections

import openai
import pytest
from test_openai_api import chat_prompt, expected

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_greedy_choices_are_each_the_answer_with_their_index(client, reference):
    messages = [{"role": "user", "content": "Three of them"}]
    result = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0, n=3)
    text, tokens, finish = expected(reference, chat_prompt(reference, messages), 6)
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert all(c.message.content == text and c.finish_reason == finish for c in result.choices)
    assert result.usage.prompt_tokens == len(reference.encode(chat_prompt(reference, messages)))  # counted once
    assert result.usage.completion_tokens == 3 * tokens


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_choices_carry_their_index_and_each_streams_the_answer(client, reference, chat):
    kwargs = {"model": "tiny", "max_tokens": 5, "temperature": 0, "n": 2, "stream": True,
              "stream_options": {"include_usage": True}}
    if chat:
        messages = [{"role": "user", "content": "Streams"}]
        prompt, stream = chat_prompt(reference, messages), client.chat.completions.create(messages=messages, **kwargs)
    else:
        prompt = "Two streams of"
        stream = client.completions.create(prompt=prompt, **kwargs)
    texts, finishes = collections.defaultdict(str), {}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += (choice.delta.content or "") if chat else choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    text, tokens, finish = expected(reference, prompt, 5) if chat else expected(
        reference, prompt, 5, stops=("<|endoftext|>", "<|im_end|>"))
    assert dict(texts) == {0: text, 1: text} and finishes == {0: finish, 1: finish}
    assert chunks[-1].usage.completion_tokens == 2 * tokens and not chunks[-1].choices


def test_a_batch_of_prompts_with_n_gives_prompt_times_n_indexes(client, reference):
    prompts = ["First prompt", "Second one"]
    result = client.completions.create(model="tiny", prompt=prompts, max_tokens=4, temperature=0, n=2)
    answers = [expected(reference, p, 4, stops=("<|endoftext|>", "<|im_end|>"))[0] for p in prompts]
    assert [(c.index, c.text) for c in result.choices] == [(0, answers[0]), (1, answers[0]),
                                                            (2, answers[1]), (3, answers[1])]
    assert result.usage.prompt_tokens == sum(len(reference.encode(p)) for p in prompts)


def test_seeded_choices_are_each_reproducible_with_seed_plus_index(client):
    def sample(seed: int, n: int) -> list[str]:
        result = client.completions.create(model="tiny", prompt="Random", max_tokens=6, temperature=1.0, seed=seed,
                                           n=n)
        return [choice.text for choice in result.choices]

    pair = sample(41, 2)
    assert pair[0] != pair[1]  # different seeds (random weights: six equal tokens by chance is unlikely)
    assert sample(41, 1) == pair[:1] and sample(42, 1) == pair[1:]


def test_more_choices_than_the_limit_is_a_400_naming_n(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="x", max_tokens=1, n=9)
    error = caught.value.response.json()["error"]
    assert error["param"] == "n" and "less than or equal to 8" in error["message"]


def test_a_model_by_id_and_a_created_that_does_not_move(client, live_server):
    listed = client.models.list().data[0]
    card = client.models.retrieve("tiny")
    assert (card.id, card.object, card.owned_by, card.created) == ("tiny", "model", "Tiny", listed.created)
    assert client.models.retrieve("tiny-alias").id == "tiny"  # an alias names its model
    assert client.models.list().data[0].created == listed.created
    for name in ("tiny-private", "no-such-model"):  # a model not public is not shown to other sites
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve(name)
        assert caught.value.response.json()["error"]["code"] == "model_not_found"
    own = openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0,
                        default_headers={"Origin": live_server.url})
    assert own.models.retrieve("tiny-private").id == "tiny-private"
