"""The engine interface: what services may ask of an inference engine.

Services depend on :class:`Engine` (a Protocol), not on Petals, so the web
layer can be unit-tested with a fake engine and the Petals client stays in one
module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters, compatible with ``transformers`` ``generate()``."""

    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    logprobs: int | None = None  # record each token's log-probability and its `logprobs` best alternatives
    # logits processors (transformers' interface) applied after the log-probabilities are read, e.g. a grammar
    logits_processors: tuple[Any, ...] = field(default=(), compare=False)
    grammar: str | None = None  # constrained decoding: an llguidance grammar (backend.engine.grammar)

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"do_sample": self.do_sample}
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.do_sample:
            # Greedy decoding ignores these; passing them would only make transformers warn.
            for name in ("temperature", "top_k", "top_p"):
                value = getattr(self, name)
                if value is not None:
                    kwargs[name] = value
        return kwargs


@dataclass(frozen=True)
class TokenLogprob:
    """A generated (or prompt) token with its log-probability and the best alternatives at its position."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # (token, logprob), best first


@dataclass(frozen=True)
class Chunk:
    """Text produced by one or more tokens of a running generation."""

    text: str
    tokens: int
    held: bool = False  # text is incomplete (a UTF-8 character not finished yet)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" on the last chunk
    matched_stop: str | None = None  # which stop sequence ended the text
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token, when SamplingParams.logprobs is set


@dataclass(frozen=True)
class SessionHistory:
    """What an open session holds, so that a longer prompt can continue it (prompt prefix reuse)."""

    ids: tuple[int, ...]  # every token so far, in order: its prompts and its generated tokens
    computed: int  # how many of them the swarm already holds attention caches for (the rest goes with the next input)
    rewinds: bool = False  # the session may be rewound to an earlier point (Engine.rewind)


@dataclass
class ModelStatus:
    key: str
    ready: bool = False
    error: str | None = None
    chat_template: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class EngineSession(Protocol):
    model_key: str
    max_length: int

    @property
    def length(self) -> int:
        """Tokens in the session so far (prefix, inputs and generated tokens)."""


class Engine(Protocol):
    """What services need from an inference engine."""

    def load(self, progress: Any = None, keys: list[str] | None = None) -> None:
        """Load these models (default: all not loaded yet); blocking. Failures set ``status()[key].error``."""

    def status(self) -> dict[str, ModelStatus]: ...

    @property
    def open_sessions(self) -> int: ...

    def count_tokens(self, model_key: str, text: str) -> int: ...

    def vocab_size(self, model_key: str) -> int:
        """Token ids are below this."""

    def token_ids(self, model_key: str, text: str) -> list[int]: ...

    def render_chat(self, model_key: str, messages: list[dict[str, str]]) -> str: ...

    async def open_session(self, model_key: str, max_length: int) -> EngineSession: ...

    async def close_session(self, session: EngineSession) -> None: ...

    def stream(self, session: EngineSession, inputs: str | None, params: SamplingParams, *,
               max_new_tokens: int, stop_sequences: list[str]) -> AsyncIterator[Chunk]: ...

    def replace_last_token(self, session: EngineSession, text: str) -> None: ...

    def session_history(self, session: EngineSession) -> SessionHistory | None:
        """The session's tokens when a generation may continue it with more input; None when it cannot (closed,
        never generated, generating now, or left unsure by a failed step)."""

    def rewind(self, session: EngineSession, keep: int) -> None:
        """Keep only the first ``keep`` tokens of the session's history (its ``session_history`` said it
        ``rewinds``); the next generation continues from there."""

    def route(self, session: EngineSession) -> list[dict[str, Any]]:
        """The servers holding the session's blocks now, in block order: ``{"peer_id", "start", "end"}`` each."""

    async def swarm(self, model_key: str) -> dict[str, Any]:
        """The model's servers as the swarm announces them (``backend.engine.swarm_map.swarm_summary``)."""

    async def prompt_logprobs(self, model_key: str, ids: list[int], top_n: int) -> list[TokenLogprob]:
        """Log-probabilities of ``ids[1:]``, each given the tokens before it (one forward pass)."""

    async def readiness(self) -> dict[str, Any]: ...

    def shutdown(self) -> None:
        """Close every session and stop the engine's network (the DHT); models loading stop too."""


class Prompt(str):
    """Prompt text that knows which of its spans are message content.

    It is the text itself (a ``str``), so every layer that counts, logs or checks characters treats it as
    text. Engines tokenize its content spans as plain text: ``<|im_start|>`` typed by a user stays the
    characters ``<|im_start|>``, never the special token (no role injection). Markup spans (a chat
    template's or the legacy format's) keep their special tokens. A plain ``str`` (the legacy APIs' raw
    ``inputs``) is markup throughout: those APIs' inputs are the prompt itself.
    """

    parts: tuple[tuple[str, bool], ...]  # (text, is_content), concatenating to the prompt

    def __new__(cls, parts: list[tuple[str, bool]] | tuple[tuple[str, bool], ...]) -> Prompt:
        parts = tuple((text, bool(content)) for text, content in parts if text)
        prompt = super().__new__(cls, "".join(text for text, _ in parts))
        prompt.parts = parts
        return prompt

    def __reduce__(self):  # pickling (and copies) keep the parts
        return (Prompt, (self.parts,))
