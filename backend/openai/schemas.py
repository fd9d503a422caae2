"""Wire format of the OpenAI-compatible API, defined once (pydantic).

Nothing is ignored in silence: a request field is honoured, or refused with a 400 naming it
(:func:`parse_request`), except the fields of :data:`IGNORED_FIELDS`, which OpenAI clients send
routinely and which cannot change the answer. A field sent as ``null`` is a field not sent.
Responses are built from these models, and ``/openapi.json`` is generated from them.

Extensions beyond OpenAI's fields (vLLM does the same): ``top_k`` and
``repetition_penalty``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from ..errors import ApiError, BadRequest
from ..validation import parse

MAX_INT = 1 << 31
MAX_LOGPROBS = 20  # alternatives per token (OpenAI: 20 on chat, 5 on completions)
MAX_BATCH = 64  # prompts in one /v1/completions request
MAX_CHOICES = 8  # choices (n) of one prompt: each is a generation, run together
R = TypeVar("R", bound=BaseModel)
Number = Annotated[float, Strict()]  # an int or a float; never a string or a bool
Penalty = Annotated[Number, Field(ge=-2, le=2)]


def _drop_none():
    return Field(default=None, exclude_if=lambda value: value is None)


# ---- requests ------------------------------------------------------------------

# Accepted and not used: bookkeeping and routing hints that cannot change the generated answer.
IGNORED_FIELDS = {
    "user": "an end-user id for abuse monitoring",
    "metadata": "tags for stored completions",
    "store": "whether OpenAI stores the completion",
    "service_tier": "OpenAI's latency tier",
    "prompt_cache_key": "a routing hint for OpenAI's prompt cache",
    "safety_identifier": "an end-user id for abuse monitoring",
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionCall(_Request):
    name: StrictStr = Field(pattern=FUNCTION_NAME)
    arguments: StrictStr = Field(description="The arguments as a JSON object, in a string.")


class ToolCall(_Request):
    id: StrictStr = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant's calls.")
    tool_call_id: StrictStr | None = Field(default=None, description="The call a tool message answers.")

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("a tool message needs tool_call_id (and only a tool message has one)")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Request):
    include_usage: StrictBool = False


class GenerationRequest(_Request):
    """Fields shared by chat and text completions."""

    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_INT)
    temperature: Number | None = Field(
        default=None, ge=0, le=2,
        description="0 means greedy decoding. When omitted, the model's registry settings apply.")
    top_p: Number | None = Field(default=None, ge=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0, le=MAX_INT, description="Extension: top-k sampling.")
    repetition_penalty: Number | None = Field(default=None, ge=0.01, le=100,
                                              description="Extension: transformers' repetition penalty.")
    n: StrictInt = Field(default=1, ge=1, le=MAX_CHOICES,
                         description="Choices to generate, each its own generation (run together).")
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    seed: StrictInt | None = Field(default=None, ge=-(1 << 63), le=(1 << 63) - 1,
                                   description="Seeds the sampler (no effect on greedy decoding).")
    frequency_penalty: Penalty = Field(default=0, description="Only 0 is supported: use repetition_penalty.")
    presence_penalty: Penalty = Field(default=0, description="Only 0 is supported: use repetition_penalty.")

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("only 0 is supported; use repetition_penalty (e.g. 1.1) to discourage repetition")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class JsonSchemaFormat(_Request):
    name: StrictStr = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None  # the output is always valid against the schema
    description: StrictStr | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


class FunctionDefinition(_Request):
    name: StrictStr = Field(pattern=FUNCTION_NAME)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="A JSON schema of the arguments object.")
    strict: StrictBool | None = None  # a constrained call always matches the schema


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: StrictStr


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(default=None, description=(
        "required or a named function: decoding is constrained to a call whose arguments match the schema."))
    parallel_tool_calls: StrictBool = True
    response_format: ResponseFormat | None = Field(default=None, description=(
        "json_object or json_schema: decoding is constrained to JSON text (valid against the schema)."))
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_INT)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    @property
    def logprobs_top(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_INT)]], Field(min_length=1)]


class CompletionRequest(GenerationRequest):
    prompt: StrictStr | TokenIds | Annotated[list[StrictStr | TokenIds], Field(min_length=1, max_length=MAX_BATCH)] = (
        Field(description="A string, token ids, or a batch (a list) of strings or token-id lists: one choice each."))
    max_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_INT,
                                         description="0 with echo: only the prompt's log-probabilities.")
    logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS,
                                       description="Log-probabilities of each token and this many best alternatives.")
    echo: StrictBool = Field(default=False, description="Prepend the prompt (and its log-probabilities).")

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch: each a string or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(item, int) for item in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)

    @property
    def logprobs_top(self) -> int | None:
        return self.logprobs

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


# ---- responses -----------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens a kept session already held (prompt prefix reuse), not prefilled again


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = _drop_none()


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None for the prompt's first token (echo)
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaFunctionCall(BaseModel):
    name: str | None = _drop_none()
    arguments: str


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = _drop_none()
    type: Literal["function"] | None = _drop_none()
    function: DeltaFunctionCall


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = _drop_none()
    content: str | None = _drop_none()
    tool_calls: list[DeltaToolCall] | None = _drop_none()


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = _drop_none()


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class TextChunkChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChunkChoice]
    usage: Usage | None = _drop_none()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- errors --------------------------------------------------------------------

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable_error"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail

    @classmethod
    def of(cls, e: ApiError) -> ErrorResponse:
        return cls(error=ErrorDetail(message=e.message, type=ERROR_TYPES.get(e.status, "server_error"),
                                     param=e.param, code=e.code))


# ---- parsing -------------------------------------------------------------------

def _unknown(model: type[BaseModel], data: dict, where: str, ignored: Mapping[str, str]) -> dict:
    """``data`` without ignored and null fields; a 400 naming the first field ``model`` does not know."""
    kept = {}
    for key, value in data.items():
        if key in model.model_fields:
            kept[key] = value
        elif value is not None and key not in ignored:
            raise BadRequest(f"'{where}{key}' is not supported by this server", param=f"{where}{key}")
    return kept


def _unknown_tool(tool: Any, i: int) -> Any:
    """A tool definition without null fields; a 400 naming a field this server does not know."""
    if not isinstance(tool, dict):
        return tool
    tool = _unknown(Tool, tool, f"tools[{i}].", {})
    if isinstance(tool.get("function"), dict):
        tool["function"] = _unknown(FunctionDefinition, tool["function"], f"tools[{i}].function.", {})
    return tool


def parse_request(model: type[R], data: Any) -> R:
    """Validate an OpenAI request: unknown fields are refused (400 naming them), not ignored."""
    if not isinstance(data, dict):
        raise BadRequest("request must be a JSON object")
    data = _unknown(model, data, "", IGNORED_FIELDS)
    if isinstance(data.get("messages"), list):
        data["messages"] = [_unknown(ChatMessage, m, f"messages[{i}].", {}) if isinstance(m, dict) else m
                            for i, m in enumerate(data["messages"])]
    if isinstance(data.get("tools"), list):
        data["tools"] = [_unknown_tool(tool, i) for i, tool in enumerate(data["tools"])]
    return parse(model, data)
