"""Log-probabilities in OpenAI's two wire shapes, and keeping them aligned with the text the client gets.

* chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``;
* completions: ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` (with ``echo``, the prompt's
  tokens first: the first has no log-probability, ``null``).

A token's entry goes out with the text it produced. Text held back (a possible stop sequence) holds its
tokens' entries back too, and the tokens of a matched stop sequence are left out, as their text is.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engine.types import TokenLogprob
from . import schemas as s


class LogprobAligner:
    """Releases token entries as the text they produced is released (by characters)."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, TokenLogprob]] = []  # (start offset of the token's text, entry)
        self._received = 0  # characters of generated text seen so far
        self._sent = 0  # characters released to the client so far

    def add(self, text: str, entries: Sequence[TokenLogprob]) -> None:
        self._pending.extend((self._received, entry) for entry in entries)  # a round's tokens start its text
        self._received += len(text)

    def release(self, sent_text: str, *, final: bool = False, stopped: bool = False) -> list[TokenLogprob]:
        """Entries for ``sent_text`` (just released); ``final``: the text ended (``stopped``: at a stop sequence)."""
        self._sent += len(sent_text)
        if final and not stopped:
            out, self._pending = [e for _, e in self._pending], []
            return out
        out = [e for start, e in self._pending if start < self._sent]
        self._pending = [] if final else [(start, e) for start, e in self._pending if start >= self._sent]
        return out


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat(entries: Sequence[TokenLogprob]) -> s.ChatLogprobs:
    return s.ChatLogprobs(content=[
        s.ChatTokenLogprob(token=e.token, logprob=e.logprob, bytes=_bytes(e.token),
                           top_logprobs=[s.TopLogprob(token=t, logprob=lp, bytes=_bytes(t)) for t, lp in e.top])
        for e in entries])


def completion(entries: Sequence[TokenLogprob | None], offset: int = 0, tokens: Sequence[str] = ()) -> (
        s.CompletionLogprobs):
    """``entries``: ``None`` for a token without a log-probability (the prompt's first), named in ``tokens``."""
    names, logprobs, tops, offsets = [], [], [], []
    for i, e in enumerate(entries):
        token = e.token if e is not None else tokens[i]
        names.append(token)
        logprobs.append(None if e is None else e.logprob)
        tops.append(None if e is None else dict(e.top))
        offsets.append(offset)
        offset += len(token)
    return s.CompletionLogprobs(tokens=names, token_logprobs=logprobs, top_logprobs=tops, text_offset=offsets)
