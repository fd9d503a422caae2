"""Tool calls on ``/v1/chat/completions``: rendering tools and calls into the prompt, constraining, parsing.

The model's calls are read in the Hermes/Qwen convention: each call is a JSON object
``{"name": ..., "arguments": {...}}`` between ``<tool_call>`` and ``</tool_call>``.

* A chat template that takes tools (its source uses ``tools``) renders them itself, and the
  conversation's assistant ``tool_calls`` and ``tool`` messages (transformers' message shapes).
* Otherwise (SmolLM2's template, the legacy format) the **fallback**: a system-message section
  lists the tools as JSON schemas and asks for ``<tool_call>`` blocks (:data:`FALLBACK_SYSTEM`);
  an assistant's earlier calls are rendered as such blocks after its text, and each ``tool``
  message as a user turn ``<tool_response>\\n{content}\\n</tool_response>`` (consecutive ones in one turn).
* ``tool_choice`` ``required`` or a named function: decoding is constrained (llguidance, the
  grammar of :func:`call_grammar`) to ``<tool_call>`` blocks whose JSON names an offered function and
  whose ``arguments`` are valid against its parameter schema; one block, or with
  ``parallel_tool_calls`` (and ``required``) up to :data:`MAX_PARALLEL_CALLS`.
* ``auto``: free text; complete blocks naming an offered function with an object of arguments become
  ``tool_calls``, anything else (invalid JSON, an unknown name) stays text content.
* ``none``: no tools are rendered, nothing is parsed (earlier calls in the conversation still are).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..engine.grammar import json_schema_grammar, lark_grammar
from ..errors import BadRequest
from . import schemas as s

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 8
FALLBACK_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}"
    "\n</tool_call>")
# the grammar's JSON layout: the separators models trained on this format write
_LAYOUT = {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's ``tools`` and ``tool_choice`` ask for."""

    offered: tuple[s.Tool, ...] = ()  # rendered into the prompt (none with tool_choice none)
    parse: bool = False  # read <tool_call> blocks out of the output
    grammar: str | None = None  # constrained decoding (required or a named function)
    names: frozenset[str] = field(default_factory=frozenset)  # functions a parsed call may name

    def definitions(self) -> list[dict[str, Any]]:
        """The offered tools as OpenAI (and transformers' templates) write them."""
        return [tool.model_dump(mode="json", exclude_none=True) for tool in self.offered]


def parameters(tool: s.Tool) -> dict[str, Any]:
    """The arguments' schema (an object: ``type`` defaults to ``object``)."""
    schema = tool.function.parameters if tool.function.parameters is not None else {"properties": {}}
    return schema if "type" in schema else {**schema, "type": "object"}


def _closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` where an object leaves it open: a subset, still valid
    (not inside ``allOf``, whose members may add properties)."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: (value if key in ("enum", "const", "default", "examples", "allOf") else _closed(value))
              for key, value in schema.items()}
    open_ = not any(key in schema for key in ("additionalProperties", "patternProperties", "unevaluatedProperties",
                                              "allOf", "anyOf", "oneOf", "$ref", "if"))  # others may add properties
    properties = schema.get("properties")
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    known = isinstance(properties, dict) and all(isinstance(n, str) and n in properties for n in required)
    if open_ and known:
        closed["additionalProperties"] = False
    return closed


def _relocated(schema: Any, base: str) -> Any:
    """``schema`` with its local references (``#/$defs/A``, ``#``) made relative to ``base`` (``#/$defs/tool0``)."""
    if isinstance(schema, list):
        return [_relocated(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: (base + value[1:] if key == "$ref" and isinstance(value, str) and value.startswith("#")
                  else value if key in ("enum", "const", "default", "examples") else _relocated(value, base))
            for key, value in schema.items()}


def call_grammar(tools: list[s.Tool], *, most: int) -> str:
    """llguidance grammar: 1 to ``most`` ``<tool_call>`` blocks, each a call of one of ``tools``.

    Each tool's parameter schema sits under the root's ``$defs`` (its own ``$defs`` and references go with it).
    """
    defs = {f"tool{i}": _relocated(_closed(parameters(tool)), f"#/$defs/tool{i}") for i, tool in enumerate(tools)}
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": tool.function.name}, "arguments": {"$ref": f"#/$defs/tool{i}"}}}
             for i, tool in enumerate(tools)]
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "$defs": defs, **_LAYOUT}
    repeat = f' ("\\n" call){{0,{most - 1}}}' if most > 1 else ""
    lark = f'start: call{repeat}\ncall: "{OPEN}\\n" body "\\n{CLOSE}"\nbody: %json {json.dumps(schema)}'
    try:
        return lark_grammar(lark)
    except ValueError as e:
        raise BadRequest(f"invalid 'tools': the JSON schemas cannot be enforced: {e}", param="tools") from None


def _check_tools(tools: list[s.Tool]) -> None:
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.function.name in seen:
            raise BadRequest(f"invalid 'tools[{i}].function.name': '{tool.function.name}' is defined twice",
                             param=f"tools[{i}].function.name")
        seen.add(tool.function.name)
        if parameters(tool)["type"] != "object":
            raise BadRequest(f"invalid 'tools[{i}].function.parameters': the arguments must be an object "
                             "(type: object)", param=f"tools[{i}].function.parameters")
        try:
            json_schema_grammar(_closed(parameters(tool)))
        except ValueError as e:
            raise BadRequest(f"invalid 'tools[{i}].function.parameters': the JSON schema cannot be enforced: {e}",
                             param=f"tools[{i}].function.parameters") from None


def plan(req: s.ChatCompletionRequest) -> ToolPlan:
    """Validate ``tools``/``tool_choice`` (400 naming the field) and decide rendering, constraint, parsing."""
    tools = list(req.tools or [])
    _check_tools(tools)
    choice = req.tool_choice or ("auto" if tools else "none")
    if choice != "none" and choice != "auto" and not tools:
        raise BadRequest("'tool_choice' requires 'tools'", param="tool_choice")
    if choice == "none" or not tools:
        return ToolPlan()
    names = frozenset(tool.function.name for tool in tools)
    if choice == "auto":
        return ToolPlan(offered=tuple(tools), parse=True, names=names)
    if req.response_format is not None and req.response_format.type != "text":
        raise BadRequest("'response_format' cannot be combined with a required tool call", param="response_format")
    if choice == "required":
        most = min(MAX_PARALLEL_CALLS, 2 * len(tools)) if req.parallel_tool_calls else 1
        return ToolPlan(offered=tuple(tools), parse=True, names=names, grammar=call_grammar(tools, most=most))
    chosen = [tool for tool in tools if tool.function.name == choice.function.name]
    if not chosen:
        raise BadRequest(f"invalid 'tool_choice': no function named '{choice.function.name}' in 'tools'",
                         param="tool_choice")
    return ToolPlan(offered=tuple(tools), parse=True, names=frozenset([choice.function.name]),
                    grammar=call_grammar(chosen, most=1))


# ---- the prompt -------------------------------------------------------------------

def _arguments(text: str) -> Any:
    """An earlier call's arguments as the object it names (a string that is no JSON: the string)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _call_block(call: s.ToolCall) -> str:
    value = {"name": call.function.name, "arguments": _arguments(call.function.arguments)}
    return f"{OPEN}\n{json.dumps(value, ensure_ascii=False)}\n{CLOSE}"


def fallback_messages(messages: list[s.ChatMessage], offered: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation as system/user/assistant texts any template or the legacy format can show."""
    rendered: list[dict[str, str]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        if role == "tool":
            response = f"<tool_response>\n{m.text()}\n</tool_response>"
            if rendered and rendered[-1].get("tool"):  # answers to parallel calls: one user turn
                rendered[-1]["content"] += "\n" + response
            else:
                rendered.append({"role": "user", "content": response, "tool": "1"})
            continue
        content = m.text()
        if m.tool_calls:
            content = "\n".join([content.strip()] * bool(content.strip()) + [_call_block(c) for c in m.tool_calls])
        rendered.append({"role": role, "content": content})
    rendered = [{"role": m["role"], "content": m["content"]} for m in rendered]
    if offered:
        section = FALLBACK_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in offered))
        if rendered[0]["role"] == "system":
            rendered[0] = {"role": "system", "content": rendered[0]["content"] + "\n\n" + section}
        else:
            rendered.insert(0, {"role": "system", "content": section})
    return rendered


def template_messages(messages: list[s.ChatMessage]) -> list[dict[str, Any]]:
    """The conversation in transformers' shapes, for a template that renders tools and calls itself."""
    rendered: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            item["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments)}} for c in m.tool_calls]
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        rendered.append(item)
    return rendered


def check_tool_messages(messages: list[s.ChatMessage]) -> None:
    """Each tool message answers a call of an earlier assistant message (400 naming it otherwise)."""
    ids: set[str] = set()
    for i, m in enumerate(messages):
        ids.update(call.id for call in m.tool_calls or ())
        if m.role == "tool" and m.tool_call_id not in ids:
            raise BadRequest(f"invalid 'messages[{i}].tool_call_id': no earlier assistant tool call has id "
                             f"'{m.tool_call_id}'", param=f"messages[{i}].tool_call_id")


# ---- the answer -------------------------------------------------------------------

def new_call(name: str, arguments: str) -> s.ResponseToolCall:
    return s.ResponseToolCall(id="call_" + uuid.uuid4().hex[:24],
                              function=s.ResponseFunctionCall(name=name, arguments=arguments))


def _prefix_held(text: str) -> int:
    """How many trailing characters of ``text`` may be the start of ``<tool_call>``."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


class CallParser:
    """Reads ``<tool_call>`` blocks out of text as it arrives; :meth:`feed` and :meth:`flush` return
    (text, calls): text safe to send as content, and the calls completed. Whitespace next to a call is dropped.
    """

    def __init__(self, names: frozenset[str]):
        self._names = names
        self._buffer = ""
        self._inside = False
        self._after_call = False
        self.calls: list[s.ResponseToolCall] = []

    def feed(self, text: str) -> tuple[str, list[s.ResponseToolCall]]:
        self._buffer += text
        out, calls = "", []
        while True:
            if self._after_call:
                self._buffer = self._buffer.lstrip()
                self._after_call = not self._buffer
            if not self._inside:
                at = self._buffer.find(OPEN)
                if at < 0:
                    keep = _prefix_held(self._buffer)
                    ready = self._buffer[:len(self._buffer) - keep]
                    body = ready.rstrip()  # trailing whitespace waits: it may come before a call
                    out += body
                    self._buffer = ready[len(body):] + self._buffer[len(ready):]
                    return out, calls
                out += self._buffer[:at].rstrip()
                self._buffer, self._inside = self._buffer[at:], True
            end = self._buffer.find(CLOSE)
            if end < 0:
                return out, calls
            block, self._buffer = self._buffer[:end + len(CLOSE)], self._buffer[end + len(CLOSE):]
            self._inside = False
            call = self._call(block[len(OPEN):-len(CLOSE)])
            if call is None:
                out += block
            else:
                calls.append(call)
                self.calls.append(call)
                self._after_call = True

    def flush(self) -> str:
        """The text held back (an unfinished block stays text; whitespace after a call is dropped)."""
        rest, self._buffer = self._buffer, ""
        return "" if self.calls and not rest.strip() else rest

    def _call(self, body: str) -> s.ResponseToolCall | None:
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
            return None
        if value["name"] not in self._names or not isinstance(value["arguments"], dict):
            return None
        return new_call(value["name"], json.dumps(value["arguments"], ensure_ascii=False))
