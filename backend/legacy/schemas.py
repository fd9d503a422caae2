"""Wire formats of the legacy APIs, defined once (pydantic).

* WebSocket ``/api/v2/generate``: :class:`OpenSessionRequest`,
  :class:`GenerateRequest`, :class:`ReattachRequest`, :class:`CancelRequest`;
  replies built by :func:`ok`, :func:`delta` and
  :func:`error`.
* HTTP ``/api/v1/generate``: :class:`HttpGenerateRequest` (the same generation
  fields plus ``model``), answered with :func:`http_result` or :func:`error`.

Requests are validated with :func:`backend.validation.parse` (one line that names
the field).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from ..engine.types import SamplingParams

# Upper bounds that stop absurd values early (the settings apply tighter limits).
MAX_INT = 1 << 31
# Sampling bounds: every value inside them samples without inf/nan (tests/test_client_mistakes.py runs the
# extremes); below them, logits / temperature and logits / repetition_penalty overflow.
MIN_TEMPERATURE = 1e-5
MIN_REPETITION_PENALTY = 0.01


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OpenSessionRequest(_Request):
    type: Literal["open_inference_session"]
    model: StrictStr | None = None
    max_length: StrictInt = Field(ge=1, le=MAX_INT)
    resumable: StrictBool = False  # an extension: the session outlives its socket (ReattachRequest)
    queue_updates: StrictBool = False  # an extension: while this session waits in line for capacity, :func:`queued`


class ReattachRequest(_Request):
    """Take over a resumable session whose socket went away (an extension)."""

    type: Literal["reattach"]
    resume_token: StrictStr = Field(min_length=1, max_length=100)


class CancelRequest(_Request):
    """Stop the running generation and close the session now (an extension; what closing the socket does for a
    session that is not resumable)."""

    type: Literal["cancel"]


class GenerationFields(_Request):
    """Generation parameters shared by the WebSocket and HTTP APIs."""

    inputs: StrictStr | None = None
    max_new_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_INT)
    max_length: StrictInt | None = Field(default=None, ge=1, le=MAX_INT)
    do_sample: StrictBool | Literal[0, 1] = False
    temperature: float | None = Field(default=None, ge=MIN_TEMPERATURE, le=100, allow_inf_nan=False)
    top_k: StrictInt | None = Field(default=None, ge=0, le=MAX_INT)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=100, allow_inf_nan=False)

    @field_validator("temperature", "top_p", "repetition_penalty", mode="before")
    @classmethod
    def _numbers_only(cls, value: Any) -> Any:
        if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
            raise ValueError("must be a number")
        return value

    def sampling(self) -> SamplingParams:
        return SamplingParams(do_sample=bool(self.do_sample), temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, repetition_penalty=self.repetition_penalty)


class GenerateRequest(GenerationFields):
    type: Literal["generate"]
    stop_sequence: StrictStr | None = None
    extra_stop_sequences: list[StrictStr] | None = None


class HttpGenerateRequest(GenerationFields):
    model: StrictStr
    stream: StrictBool = False


# ---- replies -----------------------------------------------------------------

def ok(**extra: Any) -> dict[str, Any]:
    return {"ok": True, **extra}


def delta(outputs: str, *, stop: bool, token_count: int, replay: bool = False, **facts: Any) -> dict[str, Any]:
    """One round's text; ``replay``: after a reattach, the whole generation so far (the client replaces its text).

    ``facts``: optional fields of the last round (``route``, ``context_tokens``: ``Round.facts``)."""
    reply = {"ok": True, "outputs": outputs, "stop": stop, "token_count": token_count, **facts}
    if replay:
        reply["replay"] = True
    return reply


def queued(position: int) -> dict[str, Any]:
    """The place in line of a request waiting for capacity (1: next), sent only to a session opened with
    ``queue_updates``; the request's own answer follows."""
    return {"ok": True, "queued": True, "position": position}


def error(message: str, code: str) -> dict[str, Any]:
    """An error reply: ``traceback`` (one line, the original's field name) and a stable ``code`` to switch on."""
    return {"ok": False, "traceback": message, "code": code}


def http_result(outputs: str) -> dict[str, Any]:
    return {"ok": True, "outputs": outputs}
