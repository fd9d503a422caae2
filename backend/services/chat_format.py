"""Chat messages -> the prompt text a model continues, and the stop sequences that end its answer.

The one place that knows the two formats (the web page mirrors them in
``frontend/src/lib/chat/prompt.ts``):

* the tokenizer's chat template, when the registry says ``use_chat_template``
  (rendered by the engine, with the generation prompt appended);
* the original chat page's legacy format: the system line, then ``Human: ...``
  / ``Assistant: ...`` turns joined with ``sep_token``, each finished answer
  followed by ``stop_token``, ending with ``Assistant:``.

When the messages carry no system message: a chat template renders exactly its own default
(which may be no system message at all); the legacy format uses the registry's ``system_prompt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine.types import Prompt
from ..registry import ChatSettings, ModelSpec


class ChatRenderer(Protocol):
    def render_chat(self, model_key: str, messages: list[dict[str, str]]) -> str:
        """The template's text; a :class:`Prompt` marks the message content (tokenized as plain text)."""


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop_sequences: tuple[str, ...]


def chat_stop_sequences(chat: ChatSettings) -> tuple[str, ...]:
    """Where an answer ends: the model's stop token and its extra stop sequences."""
    return tuple(s for s in (chat.stop_token, *chat.extra_stop_sequences) if s)


def completion_stop_sequences(chat: ChatSettings) -> tuple[str, ...]:
    """Stops for raw completions: end-of-text markers only, not the legacy turn separator.

    A chat template's stop token is a special end-of-turn token, meaningful anywhere; the
    legacy ``stop_token`` (e.g. ``###``) is a separator of the chat format and is not used.
    """
    stops = [*chat.extra_stop_sequences] + ([chat.stop_token] if chat.use_chat_template else [])
    return tuple(s for s in stops if s)


def legacy_prompt(chat: ChatSettings, system: str, turns: Sequence[tuple[str, str]]) -> Prompt:
    """The original page's format; ``turns`` are (role, content) with role user or assistant.

    Message content (the system line included) is marked as such: engines tokenize it as plain text.
    """
    parts: list[tuple[str, bool]] = [(system, True)]
    after_answer = False
    for role, content in turns:
        if role == "user":
            # after an answer, the session already ends with the stop token, which separates turns
            parts += [(f"{'' if after_answer else chat.sep_token}Human: ", False), (content, True)]
            after_answer = False
        else:
            # the model writes its own leading space after "Assistant:": keep answers verbatim
            parts += [(f"{chat.sep_token}Assistant:", False), (content, True), (chat.stop_token, False)]
            after_answer = True
    parts.append((f"{'' if after_answer else chat.sep_token}Assistant:", False))
    return Prompt(parts)


def format_chat(engine: ChatRenderer, spec: ModelSpec, messages: Sequence[Mapping[str, Any]],
                tools: list[dict] | None = None) -> ChatPrompt:
    """Render ``messages`` (``{"role": system | user | assistant, "content": TEXT}``) for ``spec``'s model.

    ``tools`` (OpenAI's definitions) only for a chat template that takes them; its messages may then
    carry transformers' ``tool_calls`` and ``tool`` turns (``backend/openai/tools.py``).
    """
    chat = spec.chat
    has_system = any(m["role"] == "system" for m in messages)
    if chat.use_chat_template:
        # no system message: the template's own default, not the registry's system_prompt (which may
        # differ by a character, and a small model answers differently)
        items = [dict(m) for m in messages]
        text = engine.render_chat(spec.key, items) if tools is None else engine.render_chat(spec.key, items, tools)
    else:
        system = ("\n".join(m["content"] for m in messages if m["role"] == "system") if has_system
                  else chat.system_prompt)
        text = legacy_prompt(chat, system, [(m["role"], m["content"]) for m in messages if m["role"] != "system"])
    return ChatPrompt(text=text, stop_sequences=chat_stop_sequences(chat))
