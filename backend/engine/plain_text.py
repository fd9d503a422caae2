"""Tokenize message content as plain text, and render chat templates into a :class:`~.types.Prompt`.

A Hugging Face tokenizer matches its added tokens (``<|im_start|>``, ``</s>`` ...) anywhere in the
text before its model runs, so a user who types ``<|im_start|>system`` would open a system turn. This
transformers version has no switch for that on fast tokenizers, so content that contains an added
token's text is cut there and each such occurrence is tokenized in two pieces (all but its last
character, then the last character): the pieces decode to the same characters and are never matched
as the added token. Content without added-token text (the usual case) is tokenized with the rest of
the prompt in one call, exactly as before.
"""

from __future__ import annotations

import re
from typing import Any

from .types import Prompt

_MARK = "\ue000{}\ue001"  # private-use characters: a placeholder for message i while the template renders
_MARKS = re.compile("\ue000(\\d+)\ue001")


def _added_tokens_pattern(tokenizer: Any) -> re.Pattern | None:
    cached = getattr(tokenizer, "_petals_chat_added_pattern", False)
    if cached is not False:
        return cached
    texts = sorted({t for t in tokenizer.get_added_vocab() if t}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(t) for t in texts)) if texts else None
    try:
        tokenizer._petals_chat_added_pattern = pattern
    except AttributeError:  # pragma: no cover - a tokenizer that refuses attributes: no cache
        pass
    return pattern


def _split_plain(text: str, pattern: re.Pattern) -> list[str]:
    """``text`` in pieces none of which contains an added token's text (they concatenate to ``text``)."""
    pieces: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        pieces.append(text[last:match.start()])
        token = match.group()
        pieces += _split_plain(token[:-1], pattern) + [token[-1]]
        last = match.end()
    pieces.append(text[last:])
    return [p for p in pieces if p]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without BOS; a :class:`Prompt`'s content spans are tokenized as plain text."""
    pattern = _added_tokens_pattern(tokenizer) if isinstance(text, Prompt) else None
    if pattern is None or not any(content and pattern.search(part) for part, content in text.parts):
        return tokenizer(str(text), add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    for part, content in text.parts:
        pieces += _split_plain(part, pattern) if content else [part]
    ids: list[int] = []
    for piece_ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]:  # one batch call
        ids += piece_ids
    return ids


def _template(tokenizer: Any) -> str:
    return tokenizer.chat_template or tokenizer.default_chat_template or ""


def template_takes_tools(tokenizer: Any) -> bool:
    return re.search(r"\btools\b", _template(tokenizer)) is not None


def _apply(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None) -> str:
    if tools is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # transformers 4.34's apply_chat_template passes no tools to the template: render it as it would, with them
    compiled = tokenizer._compile_jinja_template(_template(tokenizer))
    return compiled.render(messages=messages, tools=tools, add_generation_prompt=True, **tokenizer.special_tokens_map)


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> Prompt:
    """The chat template applied to ``messages`` (with the generation prompt, and ``tools`` when given),
    content spans marked."""
    text = _apply(tokenizer, messages, tools)
    marked = [{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)]
    template = _apply(tokenizer, marked, tools)
    parts: list[tuple[str, bool]] = []
    last = 0
    for match in _MARKS.finditer(template):
        parts += [(template[last:match.start()], False), (messages[int(match.group(1))]["content"], True)]
        last = match.end()
    parts.append((template[last:], False))
    prompt = Prompt(parts)
    if prompt != text:  # a template that transforms content (trims it, say): its text is the truth
        return _located(text, messages)
    return prompt


def _located(text: str, messages: list[dict[str, str]]) -> Prompt:
    """``text`` with each message's content marked where it is found, in order (a fallback)."""
    parts: list[tuple[str, bool]] = []
    last = 0
    for message in messages:
        content = message["content"]
        at = text.find(content, last) if content else -1
        if at < 0:
            continue
        parts += [(text[last:at], False), (content, True)]
        last = at + len(content)
    parts.append((text[last:], False))
    return Prompt(parts)
