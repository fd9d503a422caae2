"""The OpenAI API on the embedded SmolLM2-135M-Instruct (a real model: real answers), with the ``openai`` SDK.

One backend (``python -m backend`` with no peers: its own swarm) serves every test of this module.
"""

from __future__ import annotations

import json
import os

import openai
import pytest
from conftest import start_backend, stop_backend
from pydantic import BaseModel

pytestmark = pytest.mark.timeout(400)

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, embedded_dir):
    assert not os.environ.get("PETALS_CHAT_INITIAL_PEERS")  # no peers: the embedded swarm
    server = start_backend(tmp_path_factory.mktemp("embedded"), {"PETALS_CHAT_MODELS_DIR": str(embedded_dir.parent)},
                           timeout=300)
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    stop_backend(server)


def test_without_a_system_message_the_template_default_answers_paris(embedded):
    result = embedded.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                              max_tokens=24)
    assert result.choices[0].message.content == "The capital of France is Paris."
    assert result.choices[0].finish_reason == "stop"


class City(BaseModel):
    name: str
    country: str
    population: int
    capital: bool


CITY_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "country", "tags"],
               "properties": {"name": {"type": "string", "maxLength": 40},
                              "country": {"enum": ["France", "Italy", "Spain"]},
                              "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
                              "coordinates": {"type": "object", "properties": {"lat": {"type": "number"}}}}}


def test_structured_output_with_the_sdks_parse_is_a_valid_instance(embedded):
    messages = [{"role": "user", "content": "Describe Paris as JSON."}]
    result = embedded.beta.chat.completions.parse(model="SmolLM2-135M-Instruct", messages=messages,
                                                  response_format=City, temperature=0, max_tokens=80)
    city = result.choices[0].message.parsed
    assert isinstance(city, City), result.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_and_json_object_output_parses_and_validates(embedded, stream):
    schema_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    for response_format, prompt in ((schema_format, "Tell me about Rome."), ({"type": "json_object"}, "Hi!")):
        kwargs = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": prompt}],
                  "response_format": response_format, "temperature": 0, "max_tokens": 200}
        if stream:
            chunks = list(embedded.chat.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        else:
            choice = embedded.chat.completions.create(**kwargs).choices[0]
            text, finish = choice.message.content, choice.finish_reason
        if response_format is not schema_format and finish == "length":
            continue  # an unbounded JSON object can run past max_tokens (the bounded schema cannot)
        assert finish == "stop"
        value = json.loads(text)
        assert isinstance(value, dict), text
        if response_format is schema_format:
            assert set(value) <= set(CITY_SCHEMA["properties"]) and {"name", "country", "tags"} <= set(value)
            assert isinstance(value["name"], str) and value["country"] in ("France", "Italy", "Spain")
            assert len(value["tags"]) <= 3 and all(isinstance(t, str) for t in value["tags"])


def test_a_schema_that_cannot_be_enforced_is_refused(embedded):
    with pytest.raises(openai.BadRequestError) as caught:
        embedded.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}})
    assert caught.value.response.json()["error"]["param"] == "response_format"
