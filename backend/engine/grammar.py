"""Constrained decoding: a logits processor that lets only tokens a grammar allows (llguidance).

The LM head and sampling run in this process, so the mask applies to each step's logits without the
swarm knowing. A grammar is llguidance's (built from a JSON schema by
:func:`json_schema_grammar`, or from Lark by :func:`lark_grammar`: tool calls); the matcher consumes
each generated token and masks the next step's logits to the tokens that keep the text inside the
grammar. Once the grammar is complete it allows only the end-of-sequence token, so the text always parses.
"""

from __future__ import annotations

import json
import threading
from typing import Any

_tokenizers: dict[int, Any] = {}
_lock = threading.Lock()


def json_schema_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of JSON text valid against ``schema`` (None: any JSON object). Raises ValueError if unsupported."""
    import llguidance

    schema = {"type": "object"} if schema is None else schema
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                            defaults={"whitespace_flexible": False})
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(error)
    return grammar


def lark_grammar(lark: str) -> str:
    """llguidance's grammar of a Lark text (which may embed JSON schemas: ``%json {...}``); ValueError if invalid."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(error)
    return grammar


def _ll_tokenizer(tokenizer: Any) -> Any:
    import llguidance.hf

    with _lock:
        cached = _tokenizers.get(id(tokenizer))
        if cached is None or cached[0] is not tokenizer:
            cached = _tokenizers[id(tokenizer)] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer))
        return cached[1]


class GrammarProcessor:
    """transformers logits processor: masks every token the grammar does not allow next."""

    def __init__(self, tokenizer: Any, grammar: str):
        import llguidance
        import llguidance.torch

        self._ll = llguidance.torch
        self._matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer), grammar)
        if self._matcher.is_error():
            raise ValueError(self._matcher.get_error())
        self._bitmask = llguidance.torch.allocate_token_bitmask(1, _ll_tokenizer(tokenizer).vocab_size)
        self._started = False

    def __call__(self, input_ids, scores):
        if self._started:  # the previous step's token, now in input_ids
            self._matcher.consume_token(int(input_ids[0, -1]))
        self._started = True
        self._ll.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        vocab = scores.shape[-1]
        self._ll.apply_token_bitmask_inplace(scores[:, :vocab], self._bitmask.to(scores.device))
        return scores
