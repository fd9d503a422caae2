"""The engine's stream waits for its worker thread through any number of cancellations (``_outlast``).

A client that sends a cancel and then disconnects cancels its generation twice; if the second cancellation cut the
wait short, the generation slot would be released while the worker still ran, and the next generation would be
refused with "too many generations running" (the queue's browser test found it).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from backend.engine.petals_engine import _outlast

pytestmark = pytest.mark.timeout(30)


def test_a_twice_cancelled_wait_returns_only_after_the_worker_and_then_raises():
    release = threading.Event()
    events: list[str] = []

    def worker() -> None:
        release.wait(10)
        events.append("worker done")

    async def main() -> None:
        work = asyncio.get_running_loop().run_in_executor(None, worker)

        async def consumer() -> None:
            try:
                await _outlast(work)
            finally:
                events.append("consumer left")

        task = asyncio.ensure_future(consumer())
        await asyncio.sleep(0)  # the consumer waits now
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # the second cancellation (the disconnect)
        await asyncio.sleep(0)
        assert not task.done(), "the wait ended while the worker still runs"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert events == ["worker done", "consumer left"]


def test_a_wait_that_is_not_cancelled_just_returns():
    async def main() -> None:
        work = asyncio.get_running_loop().run_in_executor(None, lambda: None)
        await _outlast(work)
        assert work.done()

    asyncio.run(main())
