"""Incremental detokenization: turn a stream of token ids into text deltas.

Two traps make the naive ``decode(token)`` per token wrong:

* a token can end in the middle of a UTF-8 character; decoding it alone gives
  U+FFFD. Such text is *held* until the character completes (at most
  ``MAX_HOLD`` tokens: a character has at most 4 bytes, so a longer run of
  U+FFFD is genuine and is released);
* SentencePiece-style tokenizers drop a token's leading space when it is
  decoded alone. Tokens are therefore decoded in context: a window of previous
  tokens is decoded with and without the new ones and only the difference is
  emitted (the scheme vLLM and text-generation-inference use).

The deltas concatenate exactly to the decoding of all generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
MAX_HOLD = 4
CONTEXT_TOKENS = 6

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    def __init__(self, decode: Decode, context_ids: Sequence[int] = ()):
        self._decode = decode
        self._ids: list[int] = list(context_ids[-CONTEXT_TOKENS:])
        self._prefix_offset = 0  # start of the decoding window
        self._read_offset = len(self._ids)  # tokens before this are emitted
        self.held_tokens = 0

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the newly completed text (may be empty while held)."""
        self._ids.extend(token_ids)
        self.held_tokens += len(token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset:])
        if full_text.endswith(REPLACEMENT) and self.held_tokens < MAX_HOLD:
            return ""
        return self._emit(prefix_text, full_text)

    def flush(self) -> str:
        """Release whatever is held (called when the generation ends)."""
        if not self.held_tokens:
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        return self._emit(prefix_text, self._decode(self._ids[self._prefix_offset:]))

    def _emit(self, prefix_text: str, full_text: str) -> str:
        if full_text.startswith(prefix_text):
            delta = full_text[len(prefix_text):]
        else:  # the tokenizer merged across the boundary: fall back to the common prefix
            common = 0
            for a, b in zip(prefix_text, full_text, strict=False):
                if a != b:
                    break
                common += 1
            delta = full_text[common:]
        self._prefix_offset = max(self._read_offset - CONTEXT_TOKENS, 0)
        self._read_offset = len(self._ids)
        # keep the window small so a long generation stays O(tokens)
        if self._prefix_offset > 4 * CONTEXT_TOKENS:
            drop = self._prefix_offset
            del self._ids[:drop]
            self._prefix_offset -= drop
            self._read_offset -= drop
        self.held_tokens = 0
        return delta
