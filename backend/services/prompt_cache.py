"""Prompt prefix reuse: recently used inference sessions, kept open and found by the tokens they hold.

An OpenAI request is stateless: each one sends the whole conversation again, and without reuse every turn
prefills every earlier turn through the swarm. :class:`PromptCache` keeps the sessions of finished requests
open: at most ``max_sessions`` of them, reserving at most ``max_tokens`` tokens of attention cache together
(their ``max_length``), each for at most ``idle_timeout`` seconds unused (Petals servers drop a session idle for
5 minutes) and 25 minutes in all (they end every session after 30); the least recently used go first. A
request whose prompt extends the whole history of a kept session (its prompts and the tokens it generated)
continues that session and sends only the new tokens; the longest such history wins. A session serves one
request at a time: it leaves the cache while it generates and comes back when the generation ended cleanly.

A prompt that diverges from a kept history (a client that edits its last message, an answer cut by a stop
string, an answer that tokenizes differently from how it was generated) continues it from where they part when
the session can be rewound (every server of its route runs :mod:`backend.swarm.session_rewind`, as the servers
this app starts do) and they share most of it; else it gets a new session (stock Petals 2.2 servers only let a
session grow). Outputs are the same with and without reuse: the
model sees the same tokens, only fewer of them cross the swarm (bit for bit in float32; in bfloat16 a prefix
computed in pieces rounds differently from one computed at once, so a greedy near-tie can go the other way).

New sessions reserve room for a few more turns (twice what the request needs, and at least 512 tokens more,
within the model's context, the cache's budget and a quarter of a client's token share), so that the next turns
of a conversation fit the session they continue; a turn that does not fit gets a new, larger session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.types import Engine, EngineSession, SessionHistory
from ..errors import CacheFull
from ..registry import ModelSpec
from .generation import Conversation, GenerateSpec, GenerationService, Round

logger = logging.getLogger(__name__)

HEADROOM = 2  # a new session reserves this many times the tokens its request needs (room for the next turns)
MIN_HEADROOM = 512  # and at least this many tokens more (a few turns of a chat with short answers)
MAX_AGE = 25 * 60  # seconds: Petals servers end any inference session after 30 minutes (session_timeout)
MIN_REWIND = 16  # tokens a rewound session must keep (fewer: a new session costs about the same)
_SINCE = "_prompt_cache_since"  # an engine session's attribute: when the cache first kept it


@dataclass(eq=False)
class _Kept:
    model_key: str
    session: EngineSession
    history: SessionHistory
    last_used: float


class PromptCache:
    """Open sessions kept after their requests, bounded by a count, a token budget and an idle timeout."""

    def __init__(self, engine: Engine, *, max_sessions: int, max_tokens: int, idle_timeout: float,
                 limiter: Any = None, metrics: Any = None):
        """``limiter``: the app's session limiter; when it has pressure hooks (``idle``/``not_idle``: idle sessions
        it may ask to close when the swarm's cache is full, kept ones first; ``cache_freed``: closed sessions'
        cache is free again, requests waiting for it are served), kept sessions are such idle sessions.
        ``metrics``: the app's (kept sessions, tokens spared)."""
        self.engine = engine
        self._metrics = metrics
        self._limiter = limiter
        self._closing: set[asyncio.Future] = set()
        self._history = getattr(engine, "session_history", None)  # engines that cannot tell (fakes): no reuse
        self.max_sessions = max_sessions
        self.max_tokens = max_tokens
        self.idle_timeout = idle_timeout
        self._kept: list[_Kept] = []  # least recently used first
        self._sweeper: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        bounds = self.max_sessions > 0 and self.max_tokens > 0 and self.idle_timeout > 0
        return bounds and self._history is not None

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def reserved(self) -> int:
        """Tokens of attention cache the kept sessions reserve together."""
        return sum(kept.session.max_length for kept in self._kept)

    def reserve(self, needed: int, context: int, client_share: int | None = None) -> int:
        """The ``max_length`` of a new session for a request that needs ``needed`` tokens: with room for the next
        turns unless that is over the cache's budget or a quarter of a client's token share (``client_share``:
        the headroom must not cost a client its concurrent requests)."""
        size = min(context, max(HEADROOM * needed, needed + MIN_HEADROOM))
        fits = size <= self.max_tokens and (client_share is None or size <= client_share // 4)
        return size if self.enabled and fits else needed

    def take(self, model_key: str, prompt: Sequence[int], needed: int) -> tuple[EngineSession, SessionHistory] | None:
        """The kept session that holds the longest start of ``prompt`` (its whole history, or, when it can be
        rewound, most of it) with room for ``needed`` tokens (the prompt and the new ones); it leaves the cache,
        rewound to what the prompt shares with it. None when no kept session fits."""
        best, best_common = None, 0
        for kept in self._kept:
            if kept.model_key != model_key or kept.session.max_length < needed:
                continue
            common = _common_prefix(prompt, kept.history)
            if common > best_common:
                best, best_common = kept, common
        if best is None:
            return None
        self._kept.remove(best)
        self._hook("not_idle", best)
        history = best.history
        if best_common < len(history.ids):
            self.engine.rewind(best.session, best_common)
            history = dataclasses.replace(history, ids=history.ids[:best_common], computed=best_common - 1)
        self._count(history.computed)
        return best.session, history

    async def keep(self, model_key: str, session: EngineSession) -> bool:
        """Keep ``session`` (its generation ended) for later requests; False when it cannot be continued or does
        not fit the budget (the caller closes it). Sessions over the bounds are closed, least recently used
        first."""
        history = self._history(session) if self.enabled else None
        if not hasattr(session, _SINCE):  # its first time here: it was opened for the request that just ended
            setattr(session, _SINCE, time.monotonic())
        too_old = time.monotonic() - getattr(session, _SINCE) > MAX_AGE
        if history is None or session.max_length > self.max_tokens or too_old:
            return False
        kept = _Kept(model_key, session, history, time.monotonic())
        self._kept.append(kept)
        self._hook("idle", kept, lambda: self._close_soon(kept), kept_tokens=session.max_length)
        self._count()
        while len(self._kept) > self.max_sessions or self.reserved > self.max_tokens:
            await self._close(self._kept[0])
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return True

    async def _sweep(self) -> None:
        """Close kept sessions once they have been idle for ``idle_timeout`` seconds; ends when none is left."""
        while self._kept:
            expires = min(kept.last_used for kept in self._kept) + self.idle_timeout
            await asyncio.sleep(max(0.0, expires - time.monotonic()))
            now = time.monotonic()
            for kept in [k for k in self._kept if k.last_used + self.idle_timeout <= now]:
                await self._close(kept)

    async def _close(self, kept: _Kept) -> None:
        if kept not in self._kept:
            return  # taken meanwhile (or closed already)
        self._kept.remove(kept)
        self._hook("not_idle", kept)
        self._count()
        try:
            await self.engine.close_session(kept.session)
        except Exception:  # a session the swarm already dropped: nothing more to free
            logger.debug("closing a kept session failed", exc_info=True)
        self._hook("cache_freed", kept.session.max_length)

    def _close_soon(self, kept: _Kept) -> None:
        """The limiter asks a kept session to make way (it calls from the event loop, without awaiting)."""
        future = asyncio.ensure_future(self._close(kept))
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    def _count(self, reused: int = 0) -> None:
        if self._metrics is not None:
            self._metrics.prompt_cache_sessions.set(len(self._kept))
            self._metrics.prompt_cache_tokens.inc(reused)

    def _hook(self, name: str, *args: Any, **kwargs: Any) -> None:
        hook = getattr(self._limiter, name, None)
        if hook is not None:
            hook(*args, **kwargs)

    async def clear(self) -> None:
        """Close every kept session now."""
        while self._kept:
            await self._close(self._kept[0])

    async def close(self) -> None:
        """Close every kept session (the app stops)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.clear()


def _common_prefix(prompt: Sequence[int], history: SessionHistory) -> int:
    """How many tokens of ``history`` a session continuing ``prompt`` can keep: all of them when the prompt extends
    it; when it diverges (or ends) earlier and the session can be rewound, the tokens they share, if they are at
    least :data:`MIN_REWIND` and half the history (a prompt sharing only, say, a system prompt gets a new session
    and leaves the kept one to its own conversation); else 0."""
    ids = history.ids
    if len(ids) <= len(prompt) and tuple(prompt[:len(ids)]) == ids:
        return len(ids)
    if not history.rewinds:
        return 0
    common = next((i for i, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b), min(len(prompt), len(ids)))
    return common if common >= max(MIN_REWIND, len(ids) // 2) else 0


@dataclass
class Reuse:
    """How a generation used the cache: set once its session is chosen (before its first round)."""

    cached_tokens: int = 0  # prompt tokens the swarm already held (not sent again)


async def generate_reusing(service: GenerationService, cache: PromptCache, spec: ModelSpec, req: GenerateSpec,
                           client: str, reuse: Reuse) -> AsyncIterator[Round]:
    """``service.generate_once`` through the cache: continue the kept session whose history the prompt extends
    the furthest (or open one), and keep the session afterwards when its generation ended cleanly. Kept sessions
    hold attention cache in the swarm: when the swarm is out of it before the first token, they are all closed
    and the request tries once more."""
    if not cache.enabled or not req.inputs:
        async with contextlib.aclosing(service.generate_once(spec, req, client)) as rounds:
            async for round_ in rounds:
                yield round_
        return
    for last_try in (False, True):
        started = False
        try:
            async with contextlib.aclosing(_generate_kept(service, cache, spec, req, client, reuse)) as rounds:
                async for round_ in rounds:
                    started = True
                    yield round_
            return
        except CacheFull:
            if started or last_try or not len(cache):
                raise
            logger.info("the swarm is out of attention cache: closing %d kept sessions, then trying again", len(cache))
            await cache.clear()


async def _generate_kept(service: GenerationService, cache: PromptCache, spec: ModelSpec, req: GenerateSpec,
                         client: str, reuse: Reuse) -> AsyncIterator[Round]:
    reuse.cached_tokens = 0
    conversation, req = await _conversation(service, cache, spec, req, client, reuse)
    keep = False
    try:
        async with contextlib.aclosing(conversation.generate(req)) as rounds:
            async for round_ in rounds:
                yield round_
        keep = True
    except GeneratorExit:  # the consumer has what it wanted (e.g. a stop string): generate() returned cleanly
        keep = True
        raise
    finally:
        if keep:
            session = conversation.detach()
            if not await cache.keep(spec.key, session):
                await service.engine.close_session(session)
        else:
            await conversation.close()


async def _conversation(service: GenerationService, cache: PromptCache, spec: ModelSpec, req: GenerateSpec,
                        client: str, reuse: Reuse) -> tuple[Conversation, GenerateSpec]:
    """The conversation to run ``req`` in (a kept session, or a new one) and the request it runs."""
    n_inputs = await service.count_inputs(spec, req.inputs)
    ids = req.inputs if isinstance(req.inputs, list) else await asyncio.to_thread(
        service.engine.token_ids, spec.key, req.inputs)
    context = spec.chat.max_session_length
    needed = service.budget.session_length(n_inputs, req.max_new_tokens, req.max_length, context)
    taken = cache.take(spec.key, ids, needed)
    if taken is not None:
        session, history = taken
        try:
            conversation = service.adopt(spec, session, client)
        except BaseException:  # the client may not hold another session now: the session stays kept
            if not await cache.keep(spec.key, session):
                await service.engine.close_session(session)
            raise
        reuse.cached_tokens = history.computed
        return conversation, dataclasses.replace(req, inputs=list(ids[len(history.ids):]))
    reserve = cache.reserve(needed, context, service.limiter.max_tokens_per_client)
    return await service.open(spec, reserve, client, idle=False), req
