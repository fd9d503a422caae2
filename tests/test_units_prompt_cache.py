"""PromptCache on the shared fake engine: which kept session a prompt continues, and the three bounds."""

from __future__ import annotations

import asyncio

from conftest import poll_until
from fake_engine import FakeEngine

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
        assert cache(engine).reserve(300, context=2048) == 600  # room for the next turns
        assert cache(engine).reserve(10, context=2048) == 266  # at least 256 tokens more
        assert cache(engine).reserve(1500, context=2048) == 1500  # 2048 is over the cache's 1000 tokens
        assert cache(engine).reserve(400, context=600) == 600  # within the model's context
        assert cache(engine).reserve(300, context=2048, client_share=2400) == 600
        assert cache(engine).reserve(300, context=2048, client_share=2000) == 300  # over a quarter of the share

    asyncio.run(main())
