"""One planner for budgets and stops, shared by every API.

* :class:`StopRules`: when a generation ends. Each API builds one: the WebSocket API a regular
  ``stop_sequence`` (the rewind target), ``extra`` sequences rewound to it and ``until_stop``
  rounds; the OpenAI API plain ``strings`` that end the text.
* :class:`Budget`: the server's limits. Too-long input is 413 (:class:`TooLarge`) on every API;
  new tokens over the server's limit, or no room for any, are 400; a request over the session's or
  the model's length is :class:`LengthExceeded` (its message starts with ``Maximum length exceeded``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MAX_LENGTH_EXCEEDED, BadRequest, LengthExceeded, TooLarge


@dataclass(frozen=True)
class StopRules:
    stop_sequence: str | None = None  # WebSocket API: the regular stop sequence (rewind target)
    extra: tuple[str, ...] = ()  # WebSocket API: rewound to stop_sequence when matched
    strings: tuple[str, ...] = ()  # OpenAI-style stops: end the text, no rewind
    until_stop: bool = False  # WebSocket API: keep generating round after round until stop_sequence

    @property
    def continues(self) -> bool:
        """Rounds go on until a stop sequence (or the session's end), not for one request's tokens."""
        return self.until_stop and bool(self.stop_sequence)

    def sequences(self) -> list[str]:
        """Every sequence that ends the text (for the engine)."""
        return [s for s in (self.stop_sequence, *self.extra, *self.strings) if s]

    def check(self, count_tokens: Callable[[str], int]) -> None:
        """``extra`` needs a ``stop_sequence`` of exactly one token (the rewind replaces one token)."""
        if not self.extra:
            return
        if not self.stop_sequence:
            raise BadRequest("extra_stop_sequences require stop_sequence", param="extra_stop_sequences")
        if count_tokens(self.stop_sequence) != 1:
            raise BadRequest("extra_stop_sequences require stop_sequence length to be exactly 1 token",
                             param="stop_sequence")

    def rewinds(self, matched: str | None) -> bool:
        """True when the text ended with an extra sequence: the session is rewound to ``stop_sequence``."""
        return bool(self.stop_sequence) and matched in self.extra


@dataclass(frozen=True)
class Budget:
    max_new_tokens_limit: int = 4096
    max_input_chars: int = 1_000_000
    max_input_tokens: int = 16384
    default_max_tokens: int = 1024  # new tokens of an OpenAI request without max_tokens (and no registry default)

    def check_chars(self, text: str, *, subject: str, param: str) -> None:
        """``subject``: how the message names the input ("inputs are", "the prompt is")."""
        if len(text) > self.max_input_chars:
            raise TooLarge(f"{subject} too long ({len(text)} characters, limit {self.max_input_chars})", param=param)

    def check_tokens(self, n: int, *, subject: str, param: str, at_least: bool = False) -> None:
        """``at_least``: ``n`` counts a prefix only (the text was refused before it was all tokenized)."""
        if n > self.max_input_tokens:
            count = f"more than {n}" if at_least else str(n)
            raise TooLarge(f"{subject} too long ({count} tokens, limit {self.max_input_tokens})", param=param)

    def check_new_tokens(self, n: int, param: str = "max_new_tokens") -> None:
        if n > self.max_new_tokens_limit:
            raise BadRequest(f"{param} {n} is above this server's limit of {self.max_new_tokens_limit}", param=param)

    def step(self, max_new_tokens: int | None, max_length: int | None, used: int) -> int:
        """New tokens a legacy request asks for: ``max_new_tokens``, or ``max_length`` less the ``used`` context."""
        if max_new_tokens is not None:
            step = max_new_tokens
        elif max_length is not None:
            step = max_length - used
            if step <= 0:
                raise BadRequest(f"max_length {max_length} leaves no room for new tokens: the context already "
                                 f"holds {used} tokens", param="max_length")
        else:
            raise BadRequest("one of max_new_tokens or max_length is required", param="max_new_tokens")
        self.check_new_tokens(step)
        return step

    def session_length(self, n_inputs: int, max_new_tokens: int | None, max_length: int | None, context: int) -> int:
        """The length of a one-request session (legacy HTTP): inputs and new tokens, within the model's context."""
        if max_new_tokens is not None:
            self.check_new_tokens(max_new_tokens)
            total = n_inputs + max_new_tokens
        elif max_length is not None:
            total = max_length
        else:
            raise BadRequest("one of max_new_tokens or max_length is required", param="max_new_tokens")
        if total > context:
            raise LengthExceeded(f"{MAX_LENGTH_EXCEEDED}: {n_inputs} input tokens plus the new tokens exceed the "
                                 f"model's max_session_length of {context}")
        return max(total, 1)

    def completion_tokens(self, requested: int | None, default: int | None, *, prompt_tokens: int, context: int,
                          param: str, prompt_param: str) -> int:
        """New tokens of an OpenAI request: ``requested`` (``max_tokens``), else the model's default or the room."""
        room = context - prompt_tokens
        if room < 1:
            raise TooLarge(f"the prompt is too long: {prompt_tokens} tokens, and the model's context is {context}",
                           param=prompt_param)
        if requested is None:  # reserve what a typical answer needs, not the whole context
            return min(default or self.default_max_tokens, room, self.max_new_tokens_limit)
        self.check_new_tokens(requested, param)
        if requested > room:
            raise LengthExceeded(f"{MAX_LENGTH_EXCEEDED}: the prompt's {prompt_tokens} tokens plus {param} "
                                 f"{requested} exceed the model's context of {context} tokens", param=param)
        return requested
