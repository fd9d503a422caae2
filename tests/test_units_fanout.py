"""backend.openai.fanout: n choices run together; their streams merged as items arrive."""

from __future__ import annotations

import asyncio

import pytest

from backend.errors import BadRequest
from backend.openai.fanout import merged, run_all


async def ticks(name: str, n: int, gate: asyncio.Event | None = None, closed: list | None = None):
    try:
        for i in range(n):
            if gate is not None:
                await gate.wait()
            yield f"{name}{i}"
            await asyncio.sleep(0)
    finally:
        if closed is not None:
            closed.append(name)


def test_merged_keeps_each_streams_order_and_interleaves_as_items_arrive():
    async def main():
        gate = asyncio.Event()
        items = []
        async for item in merged([ticks("a", 3, gate), ticks("b", 2)]):
            items.append(item)
            if item == "b1":
                gate.set()  # "a" was waiting: "b" finished first
        return items

    items = asyncio.run(main())
    assert items[:2] == ["b0", "b1"] and items[2:] == ["a0", "a1", "a2"]


def test_closing_a_merged_stream_or_a_failure_closes_every_stream():
    async def failing():
        yield "x"
        raise BadRequest("one choice failed")

    async def main():
        closed: list[str] = []
        stream = merged([ticks("a", 100, closed=closed), ticks("b", 100, closed=closed)])
        assert await anext(stream) in ("a0", "b0")
        await stream.aclose()
        assert sorted(closed) == ["a", "b"]
        closed.clear()
        with pytest.raises(BadRequest):
            async for _ in merged([ticks("a", 100, asyncio.Event(), closed), failing()]):
                pass
        assert closed == ["a"]  # the waiting stream was stopped

    asyncio.run(main())


def test_run_all_returns_results_in_order_and_a_failure_cancels_the_rest():
    async def main():
        cancelled = asyncio.Event()

        async def slow():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async def value(v, delay):
            await asyncio.sleep(delay)
            return v

        async def fail():
            raise BadRequest("no")

        assert await run_all([value(1, 0.02), value(2, 0)]) == [1, 2]
        with pytest.raises(BadRequest):  # raised as it is, not in an exception group
            await run_all([slow(), fail()])
        assert cancelled.is_set()

    asyncio.run(main())
