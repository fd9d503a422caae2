"""The OpenAI API on the embedded SmolLM2-135M-Instruct (a real model: real answers), with the ``openai`` SDK.

One backend (``python -m backend`` with no peers: its own swarm) serves every test of this module.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import openai
import pytest
from conftest import start_backend, stop_backend
from pydantic import BaseModel, Field

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


def test_ten_schemas_of_the_suite_answer_valid_json(embedded):
    """Every fifth case of the 50-case suite (``python -m bench.openai_api --parts schemas`` runs them all)."""
    from bench.openai_api import schemas
    from bench.schema_cases import CASES

    result = schemas(embedded, CASES[::5])
    assert result["valid"] == result["cases"] == 10, result["failures"]


def test_the_next_chat_turn_continues_the_session_and_answers_as_a_fresh_prefill(embedded):
    ask = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 24}
    first = embedded.chat.completions.create(messages=FRANCE, **ask)
    messages = [*FRANCE, {"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And of Italy?"}]
    second = embedded.chat.completions.create(messages=messages, **ask)
    # the first turn's prompt and answer (its <|im_end|> included) were in the session; all but the last token
    # were computed already: the answer comes back as the model wrote it, so the prompt extends that history
    assert second.usage.prompt_tokens_details.cached_tokens == (first.usage.prompt_tokens
                                                                + first.usage.completion_tokens - 1)
    # more new tokens than any kept session has room for: a fresh session prefills the whole prompt
    fresh = embedded.chat.completions.create(messages=messages, **{**ask, "max_tokens": 1500})
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert second.choices[0].finish_reason == fresh.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == fresh.choices[0].message.content


# ---- tool calls ---------------------------------------------------------------------------------

class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


class GetTime(BaseModel):
    """The local time in a time zone."""

    timezone: str = Field(max_length=30)


TOOLS = [openai.pydantic_function_tool(GetWeather, name="get_weather"),
         openai.pydantic_function_tool(GetTime, name="get_time")]
MODELS = {"get_weather": GetWeather, "get_time": GetTime}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _valid_calls(calls) -> list[tuple[str, dict]]:
    """(name, arguments) of each call, after checking the call's shape and its arguments against the schema."""
    assert calls
    out = []
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        arguments = json.loads(call.function.arguments)
        MODELS[call.function.name].model_validate(arguments, strict=True)
        assert set(arguments) == set(MODELS[call.function.name].model_fields)  # nothing else
        out.append((call.function.name, arguments))
    return out


@pytest.mark.parametrize("tool_choice,parallel", [("required", False), ("required", True),
                                                  ({"type": "function", "function": {"name": "get_time"}}, True)])
def test_a_required_or_named_tool_call_matches_the_schema_streamed_and_not(embedded, tool_choice, parallel):
    kwargs = {"model": "SmolLM2-135M-Instruct", "messages": WEATHER, "tools": TOOLS, "tool_choice": tool_choice,
              "parallel_tool_calls": parallel, "temperature": 0, "max_tokens": 160}
    choice = embedded.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = _valid_calls(choice.message.tool_calls)
    assert parallel or len(calls) == 1
    if isinstance(tool_choice, dict):
        assert [name for name, _ in calls] == ["get_time"]
    with embedded.chat.completions.stream(**kwargs) as stream:  # the SDK's helper accumulates the deltas
        events = [event.type for event in stream]
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls" and "tool_calls.function.arguments.done" in events
    assert _valid_calls(streamed.message.tool_calls) == calls  # greedy: the same calls
    for call in streamed.message.tool_calls:  # strict pydantic tools: the SDK parses the arguments
        assert isinstance(call.function.parsed_arguments, MODELS[call.function.name])


def test_streamed_tool_call_deltas_have_openais_shape(embedded):
    chunks = list(embedded.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=WEATHER, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=160, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].index == 0 and deltas[0].id.startswith("call_") and deltas[0].type == "function"
    assert deltas[0].function.name in MODELS and deltas[0].function.arguments == ""
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:])
    json.loads("".join(d.function.arguments for d in deltas))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_round_trip_with_a_tool_result_is_answered(embedded):
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    messages = [*WEATHER,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    for tool_choice in ("auto", "none"):
        result = embedded.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, tools=TOOLS,
                                                  tool_choice=tool_choice, temperature=0, max_tokens=40)
        choice = result.choices[0]
        assert choice.finish_reason in ("stop", "length", "tool_calls")
        assert choice.message.content or choice.message.tool_calls
        assert result.usage.prompt_tokens > 40  # the call and its result are in the prompt
    assert choice.message.tool_calls is None  # tool_choice none: nothing is parsed


TOOL_ERRORS = [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "no function named 'nope'"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "requires 'tools'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters", "must be an object"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "nonsense"}}}}}]},
     "tools[0].function.parameters", "cannot be enforced"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name", "defined twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "returns": {}}}]}, "tools[0].function.returns",
     "not supported"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0]", "'function'"),
    ({"tools": [{"type": "function", "function": {"name": "two words"}}]}, "tools[0]", "pattern"),
    ({"tool_choice": "sometimes"}, "tool_choice", "invalid"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format", "cannot be combined"),
    ({"messages": [*WEATHER, {"role": "tool", "content": "21"}]}, "messages[1]", "tool_call_id"),
    ({"messages": [*WEATHER, {"role": "tool", "tool_call_id": "call_9", "content": "21"}]},
     "messages[1].tool_call_id", "no earlier assistant tool call"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0]", "only an assistant"),
]


@pytest.mark.parametrize("change,param,phrase", TOOL_ERRORS, ids=[e[1] + "-" + e[2] for e in TOOL_ERRORS])
def test_invalid_tools_and_tool_choice_are_400_naming_the_field(embedded, change, param, phrase):
    kwargs = {"model": "SmolLM2-135M-Instruct", "messages": WEATHER, "tools": TOOLS, "max_tokens": 1, **change}
    with pytest.raises(openai.BadRequestError) as caught:
        embedded.chat.completions.create(**{k: v for k, v in kwargs.items() if v is not None})
    error = caught.value.response.json()["error"]
    assert error["param"] == param and phrase in error["message"], error
