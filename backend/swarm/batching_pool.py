"""The task pool and the step function of batched decoding (see :mod:`backend.swarm.batching`).

Imports Petals: only the server process imports this module, after the hivemind bridge is applied.
"""

from __future__ import annotations

import logging
import queue
import time

import torch
from petals.server.task_pool import PrioritizedTaskPool, Task, _move_to_device_if_tensor
from petals.utils.misc import is_dummy

from ..cpu_kernels import matmul_kernels
from . import batched_llama
from .batching import BatchStats, drain

logger = logging.getLogger("petals_chat.batching")


class Group:
    """Several sessions' decode steps for the same blocks, loaded together."""

    def __init__(self, tasks: list[Task], device):
        self.tasks = tasks
        self.args = [[_move_to_device_if_tensor(a, device, share_memory=False) for a in t.args] for t in tasks]


class GroupResult(tuple):
    """The runtime's view: ``(all rows' outputs,)``; ``per_task`` has each task's output or exception."""

    per_task: list


def step_key(args: tuple):
    """What a step must share with others to run in one forward (None: it cannot be batched).

    Hidden states ``[rows, new_tokens, hidden]`` (a decode step adds one token per row, a prefill several), no
    beam reordering (dummy ``hypo_ids``), no deep prompts. Steps batch together when they go through the same
    blocks with the same adapter and dtype.
    """
    hidden_states, hypo_ids, infos, *prompts = args
    if hidden_states.ndim != 3 or not is_dummy(hypo_ids):
        return None
    if any(p is not None for p in prompts):
        return None
    adapters = {info.active_adapter for info in infos}
    if len(adapters) != 1:
        return None
    return tuple(info.uid for info in infos), adapters.pop(), hidden_states.dtype, hidden_states.shape[2]


def decode_key(args: tuple):
    """:func:`step_key` of a decode step (one new token per row); None for anything else, prefills included."""
    return step_key(args) if args[0].ndim == 3 and args[0].shape[1] == 1 else None


def step_tokens(args: tuple) -> int:
    """How many new tokens a step carries (rows x new tokens per row)."""
    return args[0].shape[0] * args[0].shape[1]


class BatchingTaskPool(PrioritizedTaskPool):
    """Petals' prioritized pool, except that queued steps for the same blocks are handed out together: decode
    steps, and prefills that arrive together (up to ``max_tokens`` new tokens per group)."""

    def __init__(self, process_func, *, max_sessions: int, max_wait: float = 0.0, max_tokens: int = 512,
                 **kwargs):
        super().__init__(process_func, **kwargs)
        self.max_sessions = max(1, max_sessions)
        self.max_tokens = max(1, max_tokens)
        self.window = GatherWindow(max_wait)

    def load_batch_to_runtime(self, timeout=None, device=None):
        device = device if device is not None else self.device
        first = self._ordered_tasks.get(block=True, timeout=timeout)
        tasks = [first]
        key = step_key(first.args) if self.max_sessions > 1 else None
        if key is not None:
            accept = _Budget(key, self.max_tokens - step_tokens(first.args))
            tasks += drain(self._ordered_tasks, accept, self.max_sessions - 1)
            if first.args[0].shape[1] == 1:  # a decode step; a prefill never waits: it is nobody's next step
                self.window.forward_time = getattr(self.process_func, "forward_time", 0.0)
                tasks += self.window.gather(self._ordered_tasks, accept,
                                            min(self.max_sessions, self.window.expected) - len(tasks))
                self.window.saw(len(tasks))
        for _ in tasks:
            self.batch_receiver.recv()  # one token was sent per submitted task
        if not self._ordered_tasks.empty():
            head: Task = self._ordered_tasks.queue[0]
            self.priority = (head.priority, head.time_submitted)
        if len(tasks) == 1:
            self._dispatched_tasks[first.uid] = first
            return first.uid, [_move_to_device_if_tensor(a, device, share_memory=False) for a in first.args]
        self._dispatched_tasks[first.uid] = tasks
        return first.uid, [Group(tasks, device)]

    def send_outputs_from_runtime(self, uid: int, batch_outputs):
        entry = self._dispatched_tasks.pop(uid, None)
        if entry is None:
            logger.error("Internal error: task %s is missing; could not set its result", uid)
        elif isinstance(entry, list):
            for task, output in zip(entry, batch_outputs.per_task, strict=True):
                if isinstance(output, BaseException):
                    task.future.set_exception(output)
                else:
                    task.future.set_result([_move_to_device_if_tensor(output, "cpu", share_memory=True)])
        else:
            entry.future.set_result([_move_to_device_if_tensor(o, "cpu", share_memory=True) for o in batch_outputs])

    def send_exception_from_runtime(self, uid: int, exception: BaseException):
        entry = self._dispatched_tasks.pop(uid, None)
        if entry is None:
            logger.error("Internal error: task %s is missing; could not set exception %s", uid, exception)
            return
        for task in entry if isinstance(entry, list) else [entry]:
            task.future.set_exception(exception)


class _Budget:
    """Accepts steps for the same blocks (``key``) while their new tokens fit in what is left of the group's."""

    def __init__(self, key, tokens_left: int):
        self.key, self.tokens_left = key, tokens_left

    def __call__(self, task: Task) -> bool:
        tokens = step_tokens(task.args)
        if tokens > self.tokens_left or step_key(task.args) != self.key:
            return False
        self.tokens_left -= tokens
        return True


class GatherWindow:
    """How long the pool may wait for the rest of a group it has seen before.

    When the last groups had more sessions than are queued now, the missing steps are usually on their way (each
    client needs a moment to turn a result into its next step), and running the early ones alone would cost a
    whole forward each. So the pool waits for them, at most ``max_wait`` seconds and at most half of the last
    batched forward's time. A lone session never waits: it is never behind its own expectation.
    """

    def __init__(self, max_wait: float):
        self.max_wait = max_wait
        self.recent: list[int] = [1, 1]
        self.forward_time = 0.0

    @property
    def expected(self) -> int:
        return max(self.recent)

    def saw(self, sessions: int) -> None:
        self.recent = [self.recent[-1], sessions]

    def gather(self, ordered, accept, missing: int) -> list:
        if missing <= 0 or self.max_wait <= 0:
            return []
        deadline = time.monotonic() + min(self.max_wait, self.forward_time / 2)
        taken = []
        while len(taken) < missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                task = ordered.get(timeout=remaining)
            except queue.Empty:
                break
            if not accept(task):
                ordered.put(task)
                break
            taken.append(task)
        return taken


class BatchedStep:
    """The pool's ``process_func``: Petals' merged step for one task, one forward per block for a group."""

    def __init__(self, stock_step, backends):
        self.stock_step = stock_step
        self.backends = backends
        self.stats = BatchStats()
        self.forward_time = 0.0  # of the last batched forward, read by the pool's GatherWindow

    def __call__(self, *args):
        if len(args) == 1 and isinstance(args[0], Group):
            return self.run_group(args[0])
        if decode_key(args) is not None:  # a lone decode step: our step is cheaper than Petals' per block
            self.stats.record(1)
            try:
                return (self.forward([args]),)
            except Exception as e:
                logger.info("Decode step failed on the batched path (%s); running it on Petals' path", e)
        return self.stock_step(*args)

    def run_group(self, group: Group) -> GroupResult:
        started = time.monotonic()
        try:
            outputs = self.forward(group.args)
            self.forward_time = time.monotonic() - started
            parts = outputs.split([step_tokens(a) for a in group.args])
            # each future gets its own storage, not the whole batch's, in the task's own shape
            per_task = [o.reshape(a[0].shape).clone() for o, a in zip(parts, group.args, strict=True)]
            self.stats.record(len(group.tasks), prefills=sum(a[0].shape[1] > 1 for a in group.args))
        except Exception as e:  # e.g. a session closed while its step was queued: retry each step alone
            logger.info("Batched step of %d sessions failed (%s); running them one by one", len(group.tasks), e)
            outputs, per_task = None, [self._run_alone(args) for args in group.args]
        rows = outputs if outputs is not None else torch.zeros(sum(step_tokens(a) for a in group.args))
        result = GroupResult((rows,))
        result.per_task = per_task
        return result

    def _run_alone(self, args):
        try:
            (output,) = self.stock_step(*args)
            return output
        except Exception as e:
            return e

    @torch.inference_mode()
    def forward(self, group_args) -> torch.Tensor:
        """All the steps' new tokens through the blocks, one per row: ``[tokens, 1, hidden]``."""
        hidden = torch.cat([a[0].reshape(-1, 1, a[0].shape[-1]) for a in group_args])
        infos_per_task = [a[2] for a in group_args]
        uids = [info.uid for info in infos_per_task[0]]
        first_backend = self.backends[uids[0]]
        handles = [info.cache_handles for infos in infos_per_task for info in infos]
        adapter = infos_per_task[0][0].active_adapter
        flat = [h for hs in handles for h in hs]
        with first_backend.memory_cache.use_cache(*flat) as tensors, \
                first_backend._peft_module.using_adapter(adapter):
            caches = _caches_per_task(tensors, [len(infos) for infos in infos_per_task])
            sessions = [batched_llama.SessionStep(a[0], a[2][0].prefix_length, c)
                        for a, c in zip(group_args, caches, strict=True)]
            if any(len({info.prefix_length for info in a[2]}) != 1 for a in group_args):
                raise ValueError("blocks of one step disagree on the prefix length")
            layers = [batched_llama.block_of(self.backends[uid]) for uid in uids]
            plan = batched_llama.plan_step(layers[0], sessions, hidden)
            with matmul_kernels(hidden.shape[0], hidden.dtype):
                for block, layer in enumerate(layers):
                    hidden = batched_llama.decode_block(layer, hidden, plan, block)
        return hidden


def _caches_per_task(tensors, blocks_per_task: list[int]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Split the flat tuple ``use_cache`` returned into, per task, per block, ``(keys, values)``."""
    caches, i = [], 0
    for blocks in blocks_per_task:
        per_block = []
        for _ in range(blocks):
            per_block.append((tensors[i], tensors[i + 1]))
            i += 2
        caches.append(per_block)
    return caches
