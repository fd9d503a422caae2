"""Generation service: sessions, stop-sequence rounds, the extra-stop rewind, budgets.

The WebSocket, HTTP and OpenAI routes all go through :class:`GenerationService`;
it depends on the :class:`backend.engine.types.Engine` interface only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..engine.types import Chunk, Engine, EngineSession, SamplingParams, TokenLogprob
from ..errors import MAX_LENGTH_EXCEEDED, BadRequest, CacheFull, Forbidden, LengthExceeded, SwarmError, UnknownModel
from ..registry import ModelSpec, Registry
from .capacity import SwarmCapacity
from .fair_queue import OnPosition
from .limits import SessionLimiter
from .metrics import Metrics
from .planning import Budget, StopRules
from .swarm_view import SwarmView

logger = logging.getLogger("backend.prompts")

_CUT_SLACK = 8  # tokens a cut through a text may add or remove at the cut


@dataclass(frozen=True)
class Round:
    """One reply of a generation: the text of ``token_count`` tokens, and whether it is the last."""

    outputs: str
    stop: bool
    token_count: int
    finish_reason: str | None = None  # on the last round: "stop" or "length"
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token, when the sampling parameters ask for them
    route: tuple[dict, ...] | None = None  # on the last round: the servers that held the session's blocks
    context_tokens: int | None = None  # on the last round: tokens the session holds after it

    def facts(self) -> dict:
        """The last round's optional wire fields (``route``, ``context_tokens``); empty on other rounds."""
        facts: dict = {}
        if self.route is not None:
            facts["route"] = list(self.route)
        if self.context_tokens is not None:
            facts["context_tokens"] = self.context_tokens
        return facts


@dataclass(frozen=True)
class GenerateSpec:
    """A validated generation request, whatever API it came from."""

    inputs: str | list[int] | None = None  # text, or token ids
    max_new_tokens: int | None = None
    max_length: int | None = None
    sampling: SamplingParams = SamplingParams()
    stops: StopRules = StopRules()
    round_tokens: int | None = None  # yield a Round every N tokens (None: one Round at the end)
    on_queue: OnPosition | None = None  # told its place in line while it waits for a generation slot


@dataclass(frozen=True)
class _Plan:
    budget: int  # new tokens the engine may generate
    round_tokens: int | None
    continues: bool  # WebSocket rounds until a stop sequence
    inputs: int = 0  # tokens of the request's inputs


class Conversation:
    """One open inference session (a socket's, or one HTTP request's)."""

    _context_base: int | None = None  # while a generation's first round is due: the session's tokens before it

    def __init__(self, service: GenerationService, spec: ModelSpec, session: EngineSession, client: str,
                 tokens: int = 0, *, idle: bool = True):
        self.service = service
        self.spec = spec
        self.session = session
        self.client = client
        self.tokens = tokens  # the max_length reserved (the limiter counts it per client)
        self.closed = False
        self.used = False  # a generation started at least once
        self.holds_cache = False  # its session reserved attention cache in the swarm (or is reserving it now)
        self._active = not idle  # a generation runs now or is about to (the session is not idle)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.service.engine.close_session(self.session)
        finally:
            self.service.limiter.release(self.client, self.tokens, idle=not self._active, cache_freed=self.holds_cache)
            self.service.metrics.sessions_open.dec()

    def detach(self) -> EngineSession:
        """Hand the session over (to the prompt cache) instead of closing it: the client's slot and tokens are
        released, the engine session stays open."""
        self.closed = True
        self.service.limiter.release(self.client, self.tokens, idle=not self._active, cache_freed=False)
        self.service.metrics.sessions_open.dec()
        return self.session

    def _set_active(self, active: bool) -> None:
        if self.closed or self._active == active:
            return
        self._active = active
        self.service.limiter.generating(self.client, active)

    async def generate(self, req: GenerateSpec) -> AsyncIterator[Round]:
        """Run one generation request; yield its replies (one, or one per round). The session is not idle
        meanwhile (:class:`~.limits.SessionLimiter`)."""
        first = not self.used
        self.used = True
        self._set_active(True)
        limiter = self.service.limiter
        try:
            await limiter.start_generation(self.client, on_position=req.on_queue)  # waits in line when all are taken
            try:
                rounds = self._generate_waiting_for_cache(req) if first else self._generate(req)
                async with contextlib.aclosing(rounds):
                    async for round_ in rounds:
                        yield round_
            finally:
                limiter.end_generation()
        finally:
            self._set_active(False)

    async def _generate_waiting_for_cache(self, req: GenerateSpec) -> AsyncIterator[Round]:
        """A session's first generation: when the servers announce no cache left for it, it waits in line first
        (:meth:`~.capacity.SwarmCapacity.admit`); when the swarm then has no cache left for it, it waits in line for
        sessions here to close (:meth:`~.limits.SessionLimiter.wait_for_cache`, ``queue_timeout`` in all), then
        tries again on a new engine session (nothing was in the old one); the CacheFull error when the wait ends."""
        limiter = self.service.limiter
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limiter.cache_queue.max_wait
        capacity = self.service.capacity
        await capacity.admit(self.session, self.client, max_wait=deadline - loop.time(), on_position=req.on_queue)
        while True:
            self.holds_cache = True
            capacity.reserving(self.session)
            since, started = limiter.freed_tokens, False
            try:
                async with contextlib.aclosing(self._generate(req)) as rounds:
                    async for round_ in rounds:
                        started = True
                        yield round_
                return
            except CacheFull as full:
                if started:
                    raise
                self.holds_cache = False  # the swarm refused it: it holds none
                capacity.forget(self.session)
                await limiter.wait_for_cache(self.client, self.tokens, full, since=since,
                                             max_wait=deadline - loop.time(), on_position=req.on_queue)
            engine = self.service.engine
            await engine.close_session(self.session)
            self.session = await engine.open_session(self.spec.key, self.session.max_length)

    async def _plan(self, req: GenerateSpec) -> _Plan:
        """Check the request against the session's budget (:mod:`.planning`) and size its rounds."""
        req.stops.check(lambda text: self.service.engine.count_tokens(self.spec.key, text))
        n_inputs = await self.service.count_inputs(self.spec, req.inputs)
        used = self.session.length + n_inputs
        remaining = self.session.max_length - used
        step = self.service.budget.step(req.max_new_tokens, req.max_length, used)
        continues = req.stops.continues
        if not continues and step > remaining:
            raise LengthExceeded(
                f"{MAX_LENGTH_EXCEEDED}: the session holds {self.session.length} tokens, the request adds "
                f"{n_inputs} and {step} new ones, over its max_length of {self.session.max_length}")
        budget = remaining if continues else step  # rounds continue until a stop sequence or the session's end
        if budget <= 0:
            raise LengthExceeded(f"{MAX_LENGTH_EXCEEDED}: the session's max_length of {self.session.max_length} "
                                 f"tokens is used up")
        return _Plan(budget=budget, round_tokens=req.round_tokens or (step if continues else None),
                     continues=continues, inputs=n_inputs)

    async def _generate(self, req: GenerateSpec) -> AsyncIterator[Round]:
        engine = self.service.engine
        plan = await self._plan(req)
        self._context_base = self.session.length + plan.inputs  # the first round's facts count from here
        until_stop, round_tokens = plan.continues, plan.round_tokens
        metrics = self.service.metrics
        pending, pending_tokens, pending_logprobs = "", 0, ()
        started = last = time.perf_counter()
        first = True
        last_round: Round | None = None
        rewind = False
        log_prompts = self.service.log_prompts
        if log_prompts:
            logger.info("prompt model=%s inputs=%r", self.spec.key, req.inputs)
            answer: list[str] = []
        stream = engine.stream(self.session, req.inputs, req.sampling, max_new_tokens=plan.budget,
                               stop_sequences=req.stops.sequences())
        stream = _counting_swarm_errors(stream, metrics)
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.tokens:
                    metrics.tokens_generated.inc(chunk.tokens)
                    (metrics.time_to_first_token if first else metrics.inter_token_latency).observe(
                        now - (started if first else last))
                    first, last = False, now
                pending += chunk.text
                if log_prompts:
                    answer.append(chunk.text)
                pending_tokens += chunk.tokens
                pending_logprobs += chunk.logprobs
                final = chunk.finish_reason is not None
                rewind = final and req.stops.rewinds(chunk.matched_stop)
                if until_stop and chunk.finish_reason == "length":
                    if pending:
                        yield Round(pending, False, pending_tokens, logprobs=pending_logprobs)
                    raise LengthExceeded(f"{MAX_LENGTH_EXCEEDED}: the session's max_length of "
                                         f"{self.session.max_length} tokens ran out before a stop sequence")
                if final:
                    last_round = Round(pending, True, pending_tokens, chunk.finish_reason, pending_logprobs)
                    break
                if round_tokens and pending_tokens >= round_tokens and not chunk.held:
                    yield self._first_with_facts(Round(pending, False, pending_tokens, logprobs=pending_logprobs))
                    pending, pending_tokens, pending_logprobs = "", 0, ()
        # The stream is closed: the worker's generate() has returned and stored the session's tokens.
        if log_prompts:
            logger.info("answer model=%s outputs=%r", self.spec.key, "".join(answer))
        if rewind:
            engine.replace_last_token(self.session, req.stops.stop_sequence)  # the rewind
        if last_round is not None:
            yield self._with_facts(last_round)

    def _route(self) -> tuple[dict, ...] | None:
        with contextlib.suppress(Exception):  # an engine without routes (or a route it cannot tell) has none
            return tuple(self.service.engine.route(self.session))
        return None

    def _with_facts(self, last: Round) -> Round:
        """The last round with the session's route through the swarm and the tokens it holds now."""
        self._context_base = None
        return dataclasses.replace(last, route=self._route(), context_tokens=self.session.length)

    def _first_with_facts(self, round_: Round) -> Round:
        """A generation's first round carries the facts too (the route, and the tokens the session holds with it),
        so that a client that cuts an answer short (a token limit of its own) knows them."""
        base, self._context_base = self._context_base, None
        if base is None:
            return round_
        return dataclasses.replace(round_, route=self._route(), context_tokens=base + round_.token_count)


async def _counting_swarm_errors(stream: AsyncIterator[Chunk], metrics: Metrics) -> AsyncIterator[Chunk]:
    """``stream``, closed when this is; a :class:`SwarmError` it raises is counted (once, whatever API asked)."""
    async with contextlib.aclosing(stream):
        try:
            async for chunk in stream:
                yield chunk
        except SwarmError:
            metrics.swarm_errors.inc()
            raise


class GenerationService:
    def __init__(self, engine: Engine, registry: Registry, limiter: SessionLimiter, metrics: Metrics, *,
                 max_new_tokens_limit: int = 4096, max_input_chars: int = 1_000_000,
                 max_input_tokens: int = 16384, default_max_tokens: int = 1024, log_prompts: bool = False,
                 check_ready: Callable[[str], None] | None = None):
        self.engine = engine
        self.check_ready = check_ready  # raises NotReady (loading, or failed and retrying) for a model key
        self.registry = registry
        self.limiter = limiter
        self.metrics = metrics
        self.budget = Budget(max_new_tokens_limit=max_new_tokens_limit, max_input_chars=max_input_chars,
                             max_input_tokens=max_input_tokens, default_max_tokens=default_max_tokens)
        self.log_prompts = log_prompts
        self.capacity = SwarmCapacity(SwarmView(engine), limiter)  # the swarm's announced cache, what we hold

    async def count_inputs(self, spec: ModelSpec, inputs: str | None) -> int:
        """Tokens in ``inputs``; a clear error when they are over the character or token limit.

        Tokenizing a long text takes a while (a second for a million CJK characters), so it runs on a worker
        thread (the tokenizer releases the GIL: other requests go on), and a text whose beginning is already
        over the token limit is refused without tokenizing the rest.
        """
        if not inputs:
            return 0
        if isinstance(inputs, list):  # token ids (the OpenAI API's token-id prompts)
            self.budget.check_tokens(len(inputs), subject="inputs are", param="inputs")
            return len(inputs)
        self.budget.check_chars(inputs, subject="inputs are", param="inputs")
        n, whole = await asyncio.to_thread(self._count_bounded, spec.key, inputs)
        self.budget.check_tokens(n, subject="inputs are", param="inputs", at_least=not whole)
        return n

    def _count_bounded(self, model_key: str, text: str) -> tuple[int, bool]:
        """(tokens, True) for ``text``, or (tokens of a prefix, False) once a prefix is over the token limit."""
        limit = self.budget.max_input_tokens
        size = limit + 1  # a token is at least one character: shorter prefixes cannot be over the limit
        while size < len(text):
            n = self.engine.count_tokens(model_key, text[:size])
            if n > limit + _CUT_SLACK:  # the cut may split a token or two; the rest only adds tokens
                return n - _CUT_SLACK, False
            size *= 4
        return self.engine.count_tokens(model_key, text), True

    def resolve_model(self, name: str | None, *, own_origin: bool) -> ModelSpec:
        """Find the model for ``name`` (default when None) and apply the ``public_api`` rule."""
        spec = self.registry.lookup(name if name is not None else self.registry.default)
        if spec is None:
            raise UnknownModel(f"Unknown model: {name!r}; see GET /api/v1/models", param="model")
        if not spec.public_api and not own_origin:
            raise Forbidden(f"We do not provide public API for {spec.key} due to license restrictions",
                            param="model")
        if self.check_ready is not None:
            self.check_ready(spec.key)
        return spec

    async def open(self, spec: ModelSpec, max_length: int, client: str, *, idle: bool = True,
                   on_queue: OnPosition | None = None) -> Conversation:
        """Open a session; ``idle``: it waits for requests (a socket's), else it generates at once. While every
        session slot is taken it waits in line (``on_queue`` is told its place)."""
        limit = spec.chat.max_session_length
        if max_length > limit:
            raise BadRequest(f"max_length {max_length} exceeds the model's max_session_length of {limit}",
                             param="max_length")
        await self.limiter.admit(client, max_length, idle=idle, on_position=on_queue)
        try:
            session = await self.engine.open_session(spec.key, max_length)
        except BaseException:
            self.limiter.release(client, max_length, idle=idle)
            raise
        self.metrics.sessions_open.inc()
        return Conversation(self, spec, session, client, max_length, idle=idle)

    def adopt(self, spec: ModelSpec, session: EngineSession, client: str) -> Conversation:
        """A conversation of ``client`` on a session that is already open (one the prompt cache kept); it generates
        at once. :class:`Busy` when the client may not hold another session."""
        self.limiter.acquire(client, session.max_length, idle=False)
        self.metrics.sessions_open.inc()
        conversation = Conversation(self, spec, session, client, session.max_length, idle=False)
        conversation.used = conversation.holds_cache = True  # it has generated before: its tokens are in the swarm
        return conversation

    async def generate_once(self, spec: ModelSpec, req: GenerateSpec, client: str) -> AsyncIterator[Round]:
        """A stateless generation (HTTP APIs): a session sized for the request, closed afterwards."""
        n_inputs = await self.count_inputs(spec, req.inputs)
        total = self.budget.session_length(n_inputs, req.max_new_tokens, req.max_length, spec.chat.max_session_length)
        conversation = await self.open(spec, total, client, idle=False)
        try:
            async for item in conversation.generate(req):
                yield item
        finally:
            await conversation.close()
