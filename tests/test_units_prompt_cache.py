"""PromptCache on the shared fake engine: which kept session a prompt continues, and the three bounds."""

from __future__ import annotations

import asyncio

from conftest import poll_until
from fake_engine import FakeEngine, in_process_app, run_in_app

from backend.engine.types import Chunk
from backend.errors import CacheFull
from backend.services.prompt_cache import PromptCache


def cache(engine: FakeEngine, **bounds) -> PromptCache:
    return PromptCache(engine, **{"max_sessions": 4, "max_tokens": 1000, "idle_timeout": 60.0, **bounds})


async def kept(engine: FakeEngine, prompts: PromptCache, ids: list[int], max_length: int = 100):
    """A session that generated ``ids`` (prompt and answer), handed to the cache."""
    session = await engine.open_session("tiny", max_length)
    session.ids = list(ids)
    assert await prompts.keep("tiny", session)
    return session


def test_the_longest_history_the_prompt_extends_is_continued_and_leaves_the_cache():
    async def main():
        engine = FakeEngine()
        prompts = cache(engine)
        short = await kept(engine, prompts, [1, 2, 3])
        long = await kept(engine, prompts, [1, 2, 3, 4, 5])
        await kept(engine, prompts, [1, 2, 9, 9, 9, 9])  # diverges from the prompt: never continued
        session, history = prompts.take("tiny", [1, 2, 3, 4, 5, 6, 7], needed=50)
        assert session is long and history.ids == (1, 2, 3, 4, 5) and history.computed == 4
        assert prompts.take("tiny", [1, 2, 3, 4, 5, 6, 7], needed=50)[0] is short  # the long one is in use
        assert prompts.take("tiny", [1, 2, 3, 4, 5, 6, 7], needed=50) is None
        assert len(prompts) == 1 and engine.open_sessions == 3  # taken sessions stay open (their requests run)
        await prompts.close()
        assert len(prompts) == 0 and engine.open_sessions == 2

    asyncio.run(main())


def test_a_session_that_can_be_rewound_is_continued_from_where_the_prompt_parts_from_it():
    async def main():
        engine = FakeEngine()
        engine.rewinds = True
        prompts = cache(engine)
        history = list(range(1, 41))  # 40 tokens
        session = await kept(engine, prompts, history)
        assert prompts.take("tiny", [1, 2, 3, 99], needed=50) is None  # too little in common: left alone
        taken, kept_history = prompts.take("tiny", [*history[:30], 99, 98], needed=50)
        assert taken is session and kept_history.ids == tuple(history[:30]) and kept_history.computed == 29
        assert session.ids == history[:30]  # rewound
        await prompts.keep("tiny", session)
        taken, kept_history = prompts.take("tiny", history[:25], needed=50)  # a prompt that ends inside it
        assert taken is session and kept_history.ids == tuple(history[:25])
        await prompts.close()

    asyncio.run(main())


def test_no_match_for_another_model_a_shorter_prompt_or_a_session_without_room():
    async def main():
        engine = FakeEngine()
        prompts = cache(engine)
        await kept(engine, prompts, [1, 2, 3, 4], max_length=10)
        assert prompts.take("tiny-private", [1, 2, 3, 4, 5], needed=6) is None  # another model
        assert prompts.take("tiny", [1, 2, 3], needed=6) is None  # the prompt is shorter than the history
        assert prompts.take("tiny", [1, 2, 3, 4, 5], needed=11) is None  # the request needs more than max_length
        assert prompts.take("tiny", [1, 2, 3, 4], needed=10) is not None  # the same tokens: continued as they are
        await prompts.close()

    asyncio.run(main())


def test_sessions_over_the_count_or_the_token_budget_are_closed_least_recently_used_first():
    async def main():
        engine = FakeEngine()
        prompts = cache(engine, max_sessions=2, max_tokens=250)
        first = await kept(engine, prompts, [1])
        second = await kept(engine, prompts, [2])
        third = await kept(engine, prompts, [3])  # over the count: the first goes
        assert first.closed and not second.closed and len(prompts) == 2
        fourth = await kept(engine, prompts, [4], max_length=150)  # 100 + 150 tokens fit, 100 + 100 + 150 do not
        assert second.closed and not third.closed and not fourth.closed and prompts.reserved == 250
        session = await engine.open_session("tiny", 300)  # alone over the budget: refused, the caller closes it
        session.ids = [5]
        assert not await prompts.keep("tiny", session) and len(prompts) == 2
        unusable = await engine.open_session("tiny", 10)  # never generated: nothing to continue
        assert not await prompts.keep("tiny", unusable)
        await prompts.close()
        assert engine.open_sessions == 2  # the two refused ones, which the caller closes

    asyncio.run(main())


def test_idle_sessions_are_closed_after_the_timeout():
    async def main():
        engine = FakeEngine()
        prompts = cache(engine, idle_timeout=0.3)
        old = await kept(engine, prompts, [1])
        await asyncio.to_thread(poll_until, lambda: old.closed, 10, "the idle session to close")
        assert len(prompts) == 0 and engine.open_sessions == 0
        fresh = await kept(engine, prompts, [2])  # the sweeper starts again for later sessions
        await asyncio.to_thread(poll_until, lambda: fresh.closed, 10, "the second idle session to close")
        await prompts.close()

    asyncio.run(main())


def test_a_disabled_cache_keeps_nothing_and_reserves_no_headroom():
    async def main():
        engine = FakeEngine()
        for bounds in ({"max_sessions": 0}, {"max_tokens": 0}, {"idle_timeout": 0}):
            prompts = cache(engine, **bounds)
            session = await engine.open_session("tiny", 10)
            session.ids = [1, 2]
            assert not prompts.enabled and not await prompts.keep("tiny", session)
            assert prompts.reserve(100, context=2048) == 100
        assert cache(engine, max_tokens=5000).reserve(600, context=2048) == 1200  # room for the next turns
        assert cache(engine).reserve(10, context=2048) == 522  # at least 512 tokens more
        assert cache(engine).reserve(1500, context=2048) == 1500  # 2048 is over the cache's 1000 tokens
        assert cache(engine).reserve(400, context=600) == 600  # within the model's context
        assert cache(engine).reserve(300, context=2048, client_share=3600) == 812
        assert cache(engine).reserve(300, context=2048, client_share=3200) == 300  # over a quarter of the share

    asyncio.run(main())


# ---- through the app: /v1/completions on a fake engine whose answers are 'x' tokens -----------------------------

class Typist(FakeEngine):
    """Answers every prompt with ``max_new_tokens`` 'x' tokens (tokens are characters), keeping each session's
    tokens as Petals does; the first ``cache_full`` generations fail before any token, like a swarm out of
    attention cache. ``inputs`` records what each generation was sent."""

    def __init__(self, cache_full: int = 0):
        super().__init__()
        self.cache_full = cache_full
        self.inputs: list = []

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        self.inputs.append(inputs)
        if self.cache_full:
            self.cache_full -= 1
            raise CacheFull("The swarm is out of capacity: attention cache is full, retry later")
        session.ids += inputs if isinstance(inputs, list) else self.token_ids(session.model_key, inputs)
        for i in range(max_new_tokens):
            session.ids.append(ord("x"))
            session.length = len(session.ids)
            yield Chunk(text="x", tokens=1, finish_reason="length" if i == max_new_tokens - 1 else None)


def complete(engine: Typist, registry, prompts: list[str], **settings) -> list[dict]:
    """Each prompt's /v1/completions answer (3 tokens), one after another in one app."""

    async def scenario(client):
        answers = []
        for prompt in prompts:
            response = await client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 3})
            answers.append(await response.get_json())
        return answers

    return run_in_app(in_process_app(engine, registry, **settings), scenario)


def test_the_next_turn_sends_only_its_new_tokens_and_reports_the_cached_ones(registry):
    engine = Typist()
    first, second, other = complete(engine, registry, ["Hello", "Helloxxx, more", "Bye"])
    assert [a["choices"][0]["text"] for a in (first, second, other)] == ["xxx"] * 3
    assert [a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in (first, second, other)] == [0, 7, 0]
    assert engine.inputs == ["Hello", [ord(c) for c in ", more"], "Bye"]
    assert engine.open_sessions == 0  # the app closed its kept sessions when it stopped


def test_kept_sessions_are_closed_when_the_swarm_is_out_of_cache_and_the_request_tries_again(registry):
    class Later(Typist):
        async def stream(self, session, inputs, params, **kwargs):
            if len(self.inputs) == 2:
                self.cache_full = 1  # the third generation finds the swarm full, two sessions being kept
            async for chunk in super().stream(session, inputs, params, **kwargs):
                yield chunk

    engine = Later()
    answers = complete(engine, registry, ["One", "Two", "Onexxx again"])
    assert answers[2]["choices"][0]["text"] == "xxx"
    assert answers[2]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # its kept session was closed too
    assert engine.inputs[2:] == [[ord(c) for c in " again"], "Onexxx again"]


def test_without_reuse_every_session_is_closed_after_its_request(registry):
    engine = Typist()
    answers = complete(engine, registry, ["Hello", "Helloxxx, more"], prompt_cache_sessions=0)
    assert [a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in answers] == [0, 0]
    assert engine.inputs == ["Hello", "Helloxxx, more"]


def test_kept_sessions_are_idle_sessions_the_limiter_may_ask_to_close():
    class Limiter:  # the pressure hooks of services.limits.SessionLimiter
        def __init__(self):
            self.idle_sessions, self.freed = {}, []

        def idle(self, key, close, *, kept_tokens=None):
            assert kept_tokens == key.session.max_length  # a kept session: it holds cache, no session slot
            self.idle_sessions[key] = close

        def not_idle(self, key):
            self.idle_sessions.pop(key, None)

        def cache_freed(self, tokens):
            self.freed.append(tokens)

    async def main():
        engine, limiter = FakeEngine(), Limiter()
        prompts = PromptCache(engine, max_sessions=4, max_tokens=1000, idle_timeout=60, limiter=limiter)
        first = await kept(engine, prompts, [1, 2], max_length=100)
        second = await kept(engine, prompts, [3, 4], max_length=200)
        assert len(limiter.idle_sessions) == 2
        assert prompts.take("tiny", [1, 2, 5], needed=10)[0] is first  # in use: no longer idle
        assert len(limiter.idle_sessions) == 1 and limiter.freed == []
        next(iter(limiter.idle_sessions.values()))()  # under pressure: the limiter tells it to close
        await asyncio.to_thread(poll_until, lambda: second.closed, 10, "the kept session to close")
        assert limiter.freed == [200] and len(prompts) == 0 and not limiter.idle_sessions
        await prompts.close()

    asyncio.run(main())


def test_a_session_is_not_kept_past_the_age_petals_servers_allow(monkeypatch):
    import backend.services.prompt_cache as module

    async def main():
        engine = FakeEngine()
        prompts = cache(engine)
        session = await kept(engine, prompts, [1, 2])
        assert prompts.take("tiny", [1, 2, 3], needed=10)[0] is session
        monkeypatch.setattr(module, "MAX_AGE", 0.0)  # older than servers keep a session: they would drop it
        assert not await prompts.keep("tiny", session) and len(prompts) == 0
        await prompts.close()

    asyncio.run(main())
