"""The work behind ``/v1``: OpenAI requests -> :class:`GenerateSpec` -> rounds -> OpenAI responses.

How OpenAI's parameters map onto generation:

* ``temperature``: 0 (anything below 1e-5) is plain greedy decoding: no registry parameter
  applies (no ``repetition_penalty`` unless the request sets it). Above, sampling at that
  temperature. Omitted: the model's registry ``generation_params`` decide (``do_sample``,
  ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``).
* ``top_p``, ``top_k`` (extension): used when sampling.
* ``repetition_penalty`` (extension): transformers' multiplicative penalty.
* ``frequency_penalty`` / ``presence_penalty``: only 0 is accepted (400 otherwise). OpenAI's
  additive penalties have no faithful equivalent in transformers' multiplicative
  ``repetition_penalty``, and a silent approximation would mislead; clients pass
  ``repetition_penalty`` instead.
* ``seed``: seeds the sampler (``SamplingParams.seed``).
* ``max_tokens`` / ``max_completion_tokens``: at most the server's ``max_new_tokens_limit`` and
  the room left in the model's context. Omitted: the registry's ``max_new_tokens``, else all
  the room left (capped by the server's limit).
* ``stop``: up to 4 strings. Chat completions also stop at the model's stop token and extra
  stop sequences; text completions at its end-of-text markers
  (:func:`backend.services.chat_format.completion_stop_sequences`). A stop string never
  appears in the output: text that may be its start is held back until it is known.
* ``usage``: ``prompt_tokens`` is the tokenizer's count of the rendered prompt,
  ``completion_tokens`` the tokens generated (a matched stop sequence's tokens included).
* ``n``: up to :data:`~.schemas.MAX_CHOICES` choices, each its own generation, run together (streamed: their
  chunks interleave, each with its ``index``); with ``seed``, choice ``i`` is seeded ``seed + i``. On a batch
  of prompts, prompt ``p``'s choices have indexes ``p * n ...``. ``usage.prompt_tokens`` counts each prompt
  once. Seeded choices of a non-streamed request run one after another, each reproducible (the sampler's
  random generator is the process's); streamed ones run together and are not.
* Any other field is refused (400 naming it), except those of :data:`~.schemas.IGNORED_FIELDS`, which
  cannot change the answer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from ..engine.grammar import json_schema_grammar
from ..engine.types import SamplingParams, TokenLogprob
from ..errors import ApiError, BadRequest, UnknownModel
from ..registry import ModelSpec
from ..routes import sse
from ..services.chat_format import completion_stop_sequences, format_chat
from ..services.generation import GenerateSpec, GenerationService, Round
from ..services.planning import StopRules
from ..services.prompt_cache import PromptCache, Reuse, generate_reusing
from . import logprobs as lp
from . import schemas as s
from . import tools
from .fanout import merged, run_all
from .logprobs import LogprobAligner
from .stops import StopCutter

logger = logging.getLogger(__name__)

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy anyway (and logits/temperature would overflow)


@dataclass(frozen=True)
class Job:
    """A validated OpenAI request, ready to run."""

    chat: bool
    spec: ModelSpec
    gen: GenerateSpec
    prompt_tokens: int
    stops: tuple[str, ...]
    include_usage: bool
    request_id: str
    id: str
    created: int
    prompt: str | list[int] = ""  # the prompt as sent (text or token ids), for echo
    logprobs: int | None = None  # alternatives per token when log-probabilities are asked for
    echo: bool = False
    index: int = 0  # the choice's index (a batch of prompts, n choices)
    n: int = 1  # choices of this job's prompt (the request's ``n``)
    tools: tools.ToolPlan | None = None  # tool calls are read out of the answer


class TextRun:
    """One generation as text pieces with stop sequences cut out; ``finish_reason`` once it ended."""

    def __init__(self, rounds: AsyncIterator[Round], first: Round | None, stops: tuple[str, ...], *,
                 finish_reason: str | None = None, cached_tokens: int = 0):
        self.cached_tokens = cached_tokens  # prompt tokens a kept session already held (prompt prefix reuse)
        self._rounds = rounds
        self._next = first
        self._cutter = StopCutter(stops)
        self._aligner = LogprobAligner()
        self.completion_tokens = 0
        self.finish_reason: str | None = finish_reason

    async def pieces(self) -> AsyncIterator[tuple[str, list[TokenLogprob]]]:
        """(text, the log-probabilities of its tokens when asked for) as the text is safe to send."""
        round_ = self._next
        while round_ is not None and self.finish_reason is None:
            self.completion_tokens += round_.token_count
            self._aligner.add(round_.outputs, round_.logprobs)
            text = self._cutter.feed(round_.outputs)
            if self._cutter.stopped:
                self.finish_reason = "stop"
            elif round_.stop:
                text += self._cutter.flush()
                self.finish_reason = "length" if round_.finish_reason == "length" else "stop"
            entries = self._aligner.release(text, final=self.finish_reason is not None,
                                            stopped=self._cutter.stopped)
            if text or entries:
                yield text, entries
            round_ = None if self.finish_reason else await anext(self._rounds, None)
        self.finish_reason = self.finish_reason or "stop"

    async def close(self) -> None:
        """Stop the generation (if still running) and close its inference session."""
        await self._rounds.aclose()


def response_grammar(response_format: s.ResponseFormat | None) -> str | None:
    """The grammar ``response_format`` asks for (None: free text); a schema it cannot enforce is a 400."""
    if response_format is None or response_format.type == "text":
        return None
    schema = response_format.json_schema.schema_ if response_format.json_schema else None
    try:
        return json_schema_grammar(schema)
    except ValueError as e:
        raise BadRequest(f"invalid 'response_format': the JSON schema cannot be enforced: {e}",
                         param="response_format") from None


async def _no_rounds() -> AsyncIterator[Round]:
    return
    yield


def sampling_params(req: s.GenerationRequest, defaults: Mapping[str, Any]) -> SamplingParams:
    def pick(name: str) -> Any:
        value = getattr(req, name)
        return defaults.get(name) if value is None else value

    def number(value: Any) -> float | None:
        return None if value is None else float(value)

    if req.temperature is None:
        do_sample, temperature = bool(defaults.get("do_sample", False)), defaults.get("temperature")
    else:
        do_sample, temperature = req.temperature >= MIN_TEMPERATURE, req.temperature
    penalty = number(pick("repetition_penalty"))
    if not do_sample:
        if req.temperature is not None:  # an explicit 0: plain greedy, only the request's own penalty
            penalty = number(req.repetition_penalty)
        return SamplingParams(repetition_penalty=penalty, seed=req.seed, logprobs=req.logprobs_top)
    return SamplingParams(do_sample=True, temperature=number(temperature), top_k=pick("top_k"),
                          top_p=number(pick("top_p")), repetition_penalty=penalty, seed=req.seed,
                          logprobs=req.logprobs_top)


class OpenAIServing:
    def __init__(self, service: GenerationService, cache: PromptCache | None = None):
        self.service = service
        self.engine = service.engine
        self.cache = cache if cache is not None else PromptCache(service.engine, max_sessions=0, max_tokens=0,
                                                                 idle_timeout=0)

    # ------------------------------------------------------------------ models
    def list_models(self, *, own_origin: bool, created: int) -> s.ModelList:
        return s.ModelList(data=[s.ModelCard(id=spec.key, created=created, owned_by=spec.family)
                                 for spec in self.service.registry.models if spec.public_api or own_origin])

    def model_card(self, name: str, *, own_origin: bool, created: int) -> s.ModelCard:
        """One model by key or alias; 404 for an unknown one, and for one not listed to this caller."""
        spec = self.service.registry.lookup(name)
        if spec is None or not (spec.public_api or own_origin):
            raise UnknownModel(f"Unknown model: {name!r}; see GET /v1/models", param="model")
        return s.ModelCard(id=spec.key, created=created, owned_by=spec.family)

    # ------------------------------------------------------------------ planning
    def plan_chat(self, req: s.ChatCompletionRequest, *, own_origin: bool, request_id: str = "") -> list[Job]:
        """One job per choice (``n``), sharing the response's id."""
        return _choices(self._plan_chat(req, own_origin=own_origin, request_id=request_id), req.n)

    def _plan_chat(self, req: s.ChatCompletionRequest, *, own_origin: bool, request_id: str) -> Job:
        spec = self.service.resolve_model(req.model, own_origin=own_origin)
        tool_plan = tools.plan(req)
        tools.check_tool_messages(req.messages)
        prompt = self._render(spec, req.messages, tool_plan)
        job = self._plan(req, spec, prompt.text, prompt.stop_sequences + req.stop_sequences(), chat=True,
                         request_id=request_id, limit_param="max_completion_tokens"
                         if req.max_completion_tokens is not None else "max_tokens")
        job = replace(job, tools=tool_plan if tool_plan.parse else None)
        constrained = tool_plan.grammar or response_grammar(req.response_format)
        if constrained is None:
            return job
        return replace(job, gen=replace(job.gen, sampling=replace(job.gen.sampling, grammar=constrained)))

    def _render(self, spec: ModelSpec, messages: list[s.ChatMessage], tool_plan: tools.ToolPlan):
        """The prompt: a chat template that takes tools renders them and the calls, else the fallback format."""
        takes_tools = getattr(self.engine, "template_takes_tools", None)  # (engines without tools: never)
        if spec.chat.use_chat_template and takes_tools is not None and takes_tools(spec.key):
            return format_chat(self.engine, spec, tools.template_messages(messages), tool_plan.definitions() or None)
        return format_chat(self.engine, spec, tools.fallback_messages(messages, tool_plan.definitions()))

    def plan_completion(self, req: s.CompletionRequest, *, own_origin: bool, request_id: str = "") -> list[Job]:
        """One job per choice (``n``) of each prompt of the batch, sharing the response's id."""
        spec = self.service.resolve_model(req.model, own_origin=own_origin)
        if any(not prompt for prompt in req.prompts):
            raise BadRequest("'prompt' must not be empty", param="prompt")
        if req.stream and len(req.prompts) > 1:
            raise BadRequest("a batch of prompts cannot be streamed; send one prompt per streamed request",
                             param="prompt")
        stops = completion_stop_sequences(spec.chat) + req.stop_sequences()
        jobs = [self._plan(req, spec, prompt, stops, chat=False, request_id=request_id, limit_param="max_tokens")
                for prompt in req.prompts]
        return [choice for i, job in enumerate(jobs)
                for choice in _choices(replace(job, id=jobs[0].id, index=i * req.n, echo=req.echo), req.n)]

    def _plan(self, req: s.ChatCompletionRequest | s.CompletionRequest, spec: ModelSpec, prompt: str | list[int],
              stops: tuple[str, ...], *, chat: bool, request_id: str, limit_param: str) -> Job:
        prompt_param = "messages" if chat else "prompt"
        budget = self.service.budget
        if isinstance(prompt, list):
            vocab = self.engine.vocab_size(spec.key)
            if max(prompt) >= vocab:
                raise BadRequest(f"token id {max(prompt)} in 'prompt' is not below the vocabulary size {vocab}",
                                 param="prompt")
            prompt_tokens = len(prompt)
        else:
            budget.check_chars(prompt, subject="the prompt is", param=prompt_param)
            prompt_tokens = self.engine.count_tokens(spec.key, prompt)
        budget.check_tokens(prompt_tokens, subject="the prompt is", param=prompt_param)
        limit = budget.completion_tokens(req.token_limit, spec.chat.generation_params.get("max_new_tokens"),
                                         prompt_tokens=prompt_tokens, context=spec.chat.max_session_length,
                                         param=limit_param, prompt_param=prompt_param)
        gen = GenerateSpec(inputs=prompt, max_new_tokens=limit, stops=StopRules(strings=stops), round_tokens=1,
                           sampling=sampling_params(req, spec.chat.generation_params))
        return Job(chat=chat, spec=spec, gen=gen, prompt_tokens=prompt_tokens, stops=stops,
                   include_usage=req.include_usage, request_id=request_id,
                   id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, created=int(time.time()),
                   prompt=prompt, logprobs=req.logprobs_top)

    # ------------------------------------------------------------------ running
    async def _start(self, job: Job, client: str) -> TextRun:
        """Start the generation and wait for its first token: errors up to here get an HTTP status."""
        if job.gen.max_new_tokens == 0:  # echo with max_tokens 0: the prompt only
            return TextRun(_no_rounds(), None, job.stops, finish_reason="length")
        reuse = Reuse()
        rounds = generate_reusing(self.service, self.cache, job.spec, job.gen, client, reuse)
        try:
            first = await anext(rounds, None)
        except BaseException:
            await rounds.aclose()
            raise
        return TextRun(rounds, first, job.stops, cached_tokens=reuse.cached_tokens)

    async def _echo(self, job: Job) -> tuple[str, list[TokenLogprob | None], list[str]]:
        """With ``echo``: the prompt's text, and when asked for its tokens' log-probabilities (a forward pass)."""
        if not job.echo:
            return "", [], []
        ids = job.prompt if isinstance(job.prompt, list) else None
        text = self.engine.decode(job.spec.key, ids) if ids is not None else job.prompt
        if job.logprobs is None:
            return text, [], []
        ids = ids if ids is not None else self.engine.token_ids(job.spec.key, text)
        entries = await self.engine.prompt_logprobs(job.spec.key, ids, job.logprobs)
        return text, [None, *entries], [self.engine.decode(job.spec.key, ids[:1])]

    async def _choice(self, job: Job, client: str) -> tuple[s.ChatChoice | s.TextChoice, TextRun]:
        echo, echo_entries, first_token = await self._echo(job)
        run = await self._start(job, client)
        try:
            pieces = [piece async for piece in run.pieces()]
        finally:
            await run.close()
        self._log_done(job, run)
        text = "".join(text for text, _ in pieces)
        entries = [entry for _, part in pieces for entry in part]
        if job.chat:
            logprobs = lp.chat(entries) if job.logprobs is not None else None
            message, finish_reason = s.AssistantMessage(content=text), run.finish_reason
            if job.tools is not None:
                parser = tools.CallParser(job.tools.names)
                content = parser.feed(text)[0] + parser.flush()
                message = s.AssistantMessage(content=content or None if parser.calls else content,
                                             tool_calls=parser.calls or None)
                finish_reason = _finish_reason(run, parser)
            return s.ChatChoice(index=job.index, message=message, finish_reason=finish_reason,
                                logprobs=logprobs), run
        logprobs = lp.completion([*echo_entries, *entries], tokens=first_token) if job.logprobs is not None else None
        return s.TextChoice(index=job.index, text=echo + text, finish_reason=run.finish_reason,
                            logprobs=logprobs), run

    async def complete(self, jobs: Job | list[Job], client: str) -> s.ChatCompletion | s.Completion:
        """The answer to a request: one choice per job (a prompt's ``n`` choices run together unless seeded, the
        prompts of a batch one after another)."""
        jobs = jobs if isinstance(jobs, list) else [jobs]
        choices, runs = [], []
        together = 1 if jobs[0].gen.sampling.seed is not None else jobs[0].n  # (seeded: see the module's doc)
        for start in range(0, len(jobs), together):
            for choice, run in await run_all([self._choice(job, client) for job in jobs[start:start + together]]):
                choices.append(choice)
                runs.append(run)
        usage = self._usage(jobs, runs)
        job = jobs[0]
        response = s.ChatCompletion if job.chat else s.Completion
        return response(id=job.id, created=job.created, model=job.spec.key, usage=usage, choices=choices)

    async def open_stream(self, job: Job | list[Job], client: str) -> AsyncIterator[str]:
        """Server-Sent Events of chunks; ends with ``[DONE]``. Closing it stops the generations. The choices (``n``)
        start together; errors until each has its first token get an HTTP status."""
        jobs = job if isinstance(job, list) else [job]  # (one prompt: a streamed batch is refused while planning)
        echoes = await run_all([self._echo(job) for job in jobs])
        runs = await self._start_all(jobs, client)
        return self._events(jobs, runs, echoes)

    async def _start_all(self, jobs: list[Job], client: str) -> list[TextRun]:
        """Every job's run; when one fails to start, the others are closed."""
        started: list[TextRun] = []

        async def start(job: Job) -> TextRun:
            run = await self._start(job, client)
            started.append(run)
            return run

        try:
            return await run_all([start(job) for job in jobs])
        except BaseException:
            for run in started:
                await run.close()
            raise

    async def _events(self, jobs: list[Job], runs: list[TextRun], echoes: list) -> AsyncIterator[str]:
        job = jobs[0]
        try:
            async for chunk in merged([self._choice_events(*each) for each in zip(jobs, runs, echoes, strict=True)]):
                yield chunk
            if job.include_usage:
                yield self._chunk(job, None, usage=self._usage(jobs, runs))
            for each, run in zip(jobs, runs, strict=True):
                self._log_done(each, run)
        except ApiError as e:
            logger.info("stream failed request_id=%s: %s", job.request_id, e.message)
            yield sse.event(s.ErrorResponse.of(e).model_dump(mode="json"))
        except Exception as e:  # a bug: log it, tell the client in one line
            logger.exception("stream failed request_id=%s", job.request_id)
            yield sse.event({"error": {"message": f"Internal error: {type(e).__name__}", "type": "server_error",
                                       "param": None, "code": "internal_error"}})
        finally:
            for run in runs:
                await run.close()
        yield sse.DONE

    async def _choice_events(self, job: Job, run: TextRun, echo: tuple[str, list, list[str]]) -> AsyncIterator[str]:
        """One choice's chunks, up to its finish_reason."""
        if job.chat:
            yield self._chunk(job, s.ChatDelta(role="assistant", content=""))
            parser = tools.CallParser(job.tools.names) if job.tools is not None else None
            async for chunk in self._chat_deltas(job, run, parser):
                yield chunk
            return
        offset = 0
        if echo[0]:
            yield self._chunk(job, echo[0], logprobs=self._text_logprobs(job, echo[1], 0, echo[2]))
            offset = len(echo[0])
        async for piece, entries in run.pieces():
            yield self._chunk(job, piece, logprobs=self._text_logprobs(job, entries, offset))
            offset += len(piece)
        yield self._chunk(job, "", finish_reason=run.finish_reason)

    async def _chat_deltas(self, job: Job, run: TextRun, parser: tools.CallParser | None) -> AsyncIterator[str]:
        """The answer's chunks: content, and with tools each call parsed (name, then arguments)."""
        async for piece, entries in run.pieces():
            logprobs = lp.chat(entries) if job.logprobs is not None else None
            calls: list[s.ResponseToolCall] = []
            if parser is not None:
                piece, calls = parser.feed(piece)
            if piece or logprobs is not None:
                yield self._chunk(job, s.ChatDelta(content=piece) if piece else s.ChatDelta(), logprobs=logprobs)
            for call in calls:
                for delta in _call_deltas(call, index=parser.calls.index(call)):
                    yield self._chunk(job, s.ChatDelta(tool_calls=[delta]))
        rest = parser.flush() if parser is not None else ""
        if rest:
            yield self._chunk(job, s.ChatDelta(content=rest))
        finish_reason = _finish_reason(run, parser) if parser is not None else run.finish_reason
        yield self._chunk(job, s.ChatDelta(), finish_reason=finish_reason)

    # ------------------------------------------------------------------ formatting
    @staticmethod
    def _text_logprobs(job: Job, entries: list, offset: int, tokens: list[str] = ()) -> s.CompletionLogprobs | None:
        return lp.completion(entries, offset, tokens) if job.logprobs is not None else None

    @staticmethod
    def _usage(jobs: list[Job], runs: list[TextRun]) -> s.Usage:
        """Each prompt counted once (its ``n`` choices share it), with the most any of its choices found cached."""
        prompts: dict[int, tuple[int, int]] = {}  # prompt's position -> (its tokens, cached tokens)
        for job, run in zip(jobs, runs, strict=True):
            tokens, cached = prompts.get(job.index // job.n, (job.prompt_tokens, 0))
            prompts[job.index // job.n] = (tokens, max(cached, run.cached_tokens))
        prompt_tokens = sum(tokens for tokens, _ in prompts.values())
        completion_tokens = sum(run.completion_tokens for run in runs)
        cached = s.PromptTokensDetails(cached_tokens=sum(cached for _, cached in prompts.values()))
        return s.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                       total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details=cached)

    @staticmethod
    def _chunk(job: Job, content: s.ChatDelta | str | None, *, finish_reason: str | None = None,
               usage: s.Usage | None = None, logprobs: BaseModel | None = None) -> str:
        common = {"id": job.id, "created": job.created, "model": job.spec.key, "usage": usage}
        if job.chat:
            choices = [] if content is None else [s.ChatChunkChoice(index=job.index, delta=content,
                                                                    finish_reason=finish_reason, logprobs=logprobs)]
            chunk: BaseModel = s.ChatCompletionChunk(choices=choices, **common)
        else:
            choices = [] if content is None else [s.TextChunkChoice(index=job.index, text=content,
                                                                    finish_reason=finish_reason, logprobs=logprobs)]
            chunk = s.CompletionChunk(choices=choices, **common)
        return sse.event(chunk.model_dump(mode="json"))

    @staticmethod
    def _log_done(job: Job, run: TextRun) -> None:
        """One line per generation, without user text (the service logs texts when log_prompts is on)."""
        logger.info("%s done request_id=%s model=%s prompt_tokens=%d completion_tokens=%d finish_reason=%s",
                    "chat.completion" if job.chat else "completion", job.request_id, job.spec.key,
                    job.prompt_tokens, run.completion_tokens, run.finish_reason)


def _finish_reason(run: TextRun, parser: tools.CallParser) -> str:
    """``tool_calls`` when the answer ended after calls (not cut by the token limit)."""
    return "tool_calls" if parser.calls and run.finish_reason == "stop" else run.finish_reason


def _call_deltas(call: s.ResponseToolCall, *, index: int) -> list[s.DeltaToolCall]:
    """A call as OpenAI streams one: its id, type and name (arguments empty), then its arguments."""
    return [s.DeltaToolCall(index=index, id=call.id, type="function",
                            function=s.DeltaFunctionCall(name=call.function.name, arguments="")),
            s.DeltaToolCall(index=index, function=s.DeltaFunctionCall(arguments=call.function.arguments))]


def _choices(job: Job, n: int) -> list[Job]:
    """``n`` jobs for ``job``'s prompt: indexes from ``job.index`` on, a seeded sampler's seed moved by one each."""
    seed = job.gen.sampling.seed

    def choice(i: int) -> Job:
        sampling = job.gen.sampling if seed is None else replace(job.gen.sampling, seed=_shift(seed, i))
        return replace(job, index=job.index + i, n=n, gen=replace(job.gen, sampling=sampling))

    return [choice(i) for i in range(n)]


def _shift(seed: int, i: int) -> int:
    """``seed + i`` within the seeds the API accepts (64-bit signed)."""
    return seed + i if seed + i < (1 << 63) else seed - i
