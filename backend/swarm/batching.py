"""Batched decode steps for a stock Petals 2.2 server, installed at start-up (not a fork).

Petals 2.2 merges all of a server's blocks into one inference task pool whose ``load_batch_to_runtime`` hands the
runtime exactly ONE task at a time (``petals/server/task_pool.py``: the pool "does *not* combine incoming
requests into batches"), so N sessions cost N forward passes per token. :func:`install` replaces
``merge_inference_pools_inplace`` in ``petals.server.server`` so the merged pool is a :class:`BatchingTaskPool`:

- When the runtime asks for work, the pool takes the most urgent task as before. If it is a decode step (one new
  token per row, no deep prompts, no beam reordering) it also takes every other decode step already queued for
  the same blocks and adapter, up to ``max_sessions``. A lone session never waits for company: its step runs at
  once (through the same code as a group: cheaper per block than Petals' path). When the last groups were larger
  than what is queued now, the pool waits a moment (at most ``max_wait_ms`` and half a forward) for the missing
  steps (``batching_pool.GatherWindow``).
- A group of steps runs as one forward per block (:mod:`backend.swarm.batched_llama`), each session
  keeping its own cache and prefix length. If the group fails (e.g. one session closed while queued), each step
  is rerun alone on Petals' path, so one session's error never fails its batch-mates.
- Prefill steps that arrive together (say, several users sending a message at the same moment) go into the
  group too, each with its own causal mask, up to ``max_tokens`` new tokens per group; a lone prefill, other
  model families and anything unusual take Petals' path unchanged.

Batching needs the runtime to load work right before running it, so the server's ``prefetch_batches`` is 0
(:func:`server_args`). :func:`install` refuses Petals releases it was not written against.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

SUPPORTED_PETALS = ("2.2.0.post1",)
DEFAULT_MAX_SESSIONS = 64
DEFAULT_MAX_WAIT_MS = 20.0
DEFAULT_MAX_TOKENS = 512  # new tokens per group: prefills that arrive together share a forward up to this

logger = logging.getLogger("petals_chat.batching")


class UnsupportedPetals(RuntimeError):
    """The installed Petals is not a release this module was written and tested against."""


def install(max_sessions: int = DEFAULT_MAX_SESSIONS, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
            max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
    """Make every Petals server started later in this process batch concurrent sessions' steps."""
    import petals
    from petals.server import server as server_module

    if petals.__version__ not in SUPPORTED_PETALS:
        raise UnsupportedPetals(f"batched decoding supports Petals {', '.join(SUPPORTED_PETALS)}, not "
                                f"{petals.__version__}; run the server with batching turned off")
    stock_merge = server_module.merge_inference_pools_inplace

    def merge_inference_pools_inplace(backends):
        if not _all_supported(backends):
            logger.info("Batched decoding: these blocks are not plain Llama blocks, using Petals' own path")
            return stock_merge(backends)
        return merge_into_batching_pool(backends, max_sessions, max_wait_ms / 1000, max_tokens)

    server_module.merge_inference_pools_inplace = merge_inference_pools_inplace


def server_args(argv: Sequence[str]) -> list[str]:
    """Petals server arguments batching needs: no prefetching (the pool groups what is queued when it runs)."""
    if any(a == "--prefetch_batches" or a.startswith("--prefetch_batches=") for a in argv):
        return list(argv)
    return [*argv, "--prefetch_batches", "0"]


def _all_supported(backends) -> bool:
    from .batched_llama import supports

    return all(supports(b) for b in backends.values())


def merge_into_batching_pool(backends, max_sessions: int, max_wait: float = 0.0,
                             max_tokens: int = DEFAULT_MAX_TOKENS):
    """Like Petals' ``merge_inference_pools_inplace``, with a :class:`BatchingTaskPool` as the shared pool."""
    from petals.server.backend import _MergedInferenceStep

    from .batching_pool import BatchedStep, BatchingTaskPool

    first_pool = next(iter(backends.values())).inference_pool
    pool = BatchingTaskPool(BatchedStep(_MergedInferenceStep(backends), backends),
                            max_batch_size=first_pool.max_batch_size, device=first_pool.device,
                            name="merged_inference", max_sessions=max_sessions, max_wait=max_wait,
                            max_tokens=max_tokens)
    for backend in backends.values():
        assert not backend.inference_pool.is_alive()
        backend.inference_pool = pool
    return pool


class BatchStats:
    """Counts of steps, of forwards, of steps that ran alone and of prefills that shared a forward; logged when
    a larger group than ever before runs, and every ``every`` forwards."""

    def __init__(self, every: int = 2000):
        self.lock = threading.Lock()
        self.steps = self.forwards = self.largest = self.alone = self.prefills = self.largest_prefills = 0
        self.every = every

    def record(self, sessions: int, prefills: int = 0) -> None:
        with self.lock:
            self.steps += sessions
            self.forwards += 1
            self.alone += sessions == 1
            self.prefills += prefills if sessions > 1 else 0
            if sessions > self.largest or self.forwards % self.every == 0:
                self.largest = max(self.largest, sessions)
                logger.info("Batched decoding: %d sessions in one forward (%d steps in %d forwards so far, "
                            "%d of them alone, %d prefills in groups)", sessions, self.steps, self.forwards,
                            self.alone, self.prefills)
            if sessions > 1 and prefills > self.largest_prefills:
                self.largest_prefills = prefills
                logger.info("Batched prefills: %d prefills in one forward", prefills)


def drain(ordered: queue.PriorityQueue, accept, limit: int) -> list:
    """Take up to ``limit`` queued items that ``accept``; put the others back in their order."""
    taken, held = [], []
    while len(taken) < limit:
        try:
            item = ordered.get_nowait()
        except queue.Empty:
            break
        (taken if accept(item) else held).append(item)
    for item in held:
        ordered.put(item)
    return taken
