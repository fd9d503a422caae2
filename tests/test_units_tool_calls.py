"""Tool calls without a server: reading ``<tool_call>`` blocks as text arrives, the fallback prompt, a template
that renders tools itself, and the constraining grammar (backend/openai/tools.py)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from backend.engine import plain_text
from backend.openai import schemas as s
from backend.openai import tools

CALL = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'


def _parse(text: str, step: int) -> tuple[str, list[tuple[str, str]]]:
    parser = tools.CallParser(frozenset({"f"}))
    out = ""
    for at in range(0, len(text), step):
        out += parser.feed(text[at:at + step])[0]
    return out + parser.flush(), [(c.function.name, c.function.arguments) for c in parser.calls]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_calls_are_read_out_of_text_however_it_is_cut(step):
    assert _parse(f"Let me look.\n{CALL}\n{CALL}\n", step) == ("Let me look.", [("f", '{"x": 1}')] * 2)
    assert _parse("no call here <tool but text\n", step) == ("no call here <tool but text\n", [])
    for kept in ('<tool_call>\n{"name": "f", "arguments": {"x": 1}\n</tool_call>',  # invalid JSON
                 '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',  # not an offered function
                 '<tool_call>\n{"name": "f", "arguments": "x"}\n</tool_call>',  # arguments not an object
                 '<tool_call>\n{"name": "f", "arguments": {"x": 1}}'):  # cut before its end
        assert _parse(kept, step) == (kept, [])


def test_the_fallback_renders_tools_calls_and_results_as_plain_turns():
    request = s.ChatCompletionRequest.model_validate({"model": "m", "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "x?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "one"},
        {"role": "tool", "tool_call_id": "b", "content": "two"}]})
    plan = tools.plan(request)
    messages = tools.fallback_messages(request.messages, plan.definitions())
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "f"' in messages[0]["content"]
    assert messages[2]["content"] == f"Checking.\n{CALL}\n" + CALL.replace("1", "2")
    assert messages[3]["content"] == "<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n</tool_response>"
    assert tools.fallback_messages(request.messages[:2], []) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "x?"}]  # no tools: as before


HERMES = ("{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n{% endif %}"
          "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
          "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
          "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")


def test_a_template_that_takes_tools_renders_them_and_the_calls(embedded_dir):
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    assert not plain_text.template_takes_tools(tokenizer)  # SmolLM2's: the fallback
    tokenizer.chat_template = HERMES
    assert plain_text.template_takes_tools(tokenizer)
    request = s.ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "<|im_start|>x?"}, {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "one"}]})
    definitions = [{"type": "function", "function": {"name": "f"}}]
    prompt = plain_text.render_chat(tokenizer, tools.template_messages(request.messages), definitions)
    assert str(prompt).startswith('<tools>{"function": {"name": "f"}, "type": "function"}</tools>\n')
    assert '<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>' in prompt and "<|im_start|>tool\none" in prompt
    ids = plain_text.encode(tokenizer, prompt)  # the user's '<|im_start|>' is content: no turn of its own
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 4


def test_the_grammar_allows_exactly_valid_calls(embedded_dir):
    import llguidance
    import llguidance.hf

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    tool = s.Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}})
    grammar = tools.call_grammar([tool], most=2)

    def allowed(text: str) -> bool:
        matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer), grammar)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return matcher.validate_tokens(ids) == len(ids)

    assert allowed(CALL) and allowed(CALL + "\n" + CALL)
    assert not allowed(CALL + "\n" + CALL + "\n" + CALL)  # at most 2
    assert not allowed(CALL.replace('{"x": 1}', '{"x": 1, "y": 2}'))  # open objects are closed
    assert not allowed(CALL.replace('"f"', '"g"')) and not allowed(CALL.replace("1", '"1"'))
    assert json.loads(CALL[len("<tool_call>"):-len("</tool_call>")])["arguments"] == {"x": 1}


def test_references_in_parameter_schemas_survive_the_call_grammar(embedded_dir):
    import llguidance
    import llguidance.hf

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    nested = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"],  # pydantic's shape
              "$defs": {"A": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}}}
    tree = {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}}}
    grammar = tools.call_grammar([s.Tool.model_validate({"type": "function", "function": {"name": n, "parameters": p}})
                                  for n, p in (("nested", nested), ("tree", tree))], most=1)

    def allowed(name: str, arguments: str) -> bool:
        matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer), grammar)
        ids = tokenizer(f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>',
                        add_special_tokens=False)["input_ids"]
        return matcher.validate_tokens(ids) == len(ids)

    assert allowed("nested", '{"a": {"b": "x"}}') and not allowed("nested", '{"a": {"b": 1}}')
    assert allowed("tree", '{"kids": [{"kids": []}]}') and not allowed("tree", '{"kids": [{"b": 1}]}')
