"""The coalesced LM head: concurrent calls share one matmul, each caller gets exactly its own rows."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import poll_until

from backend.engine.coalesced_head import CoalescedHead, install

WIDTH, VOCAB = 8, 50


class GatedLinear:
    """A linear map whose first call blocks until released, so that other calls queue up behind it."""

    def __init__(self):
        torch.manual_seed(0)
        self.weight = torch.randn(VOCAB, WIDTH)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.row_counts: list[int] = []

    def __call__(self, hidden):
        self.row_counts.append(hidden.reshape(-1, WIDTH).shape[0])
        if len(self.row_counts) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return torch.nn.functional.linear(hidden, self.weight)


def run_threads(head, inputs):
    results: list = [None] * len(inputs)

    def call(i):
        try:
            results[i] = head(inputs[i])
        except Exception as e:  # noqa: BLE001 - inspected by the test
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    return threads, results


def test_calls_queued_behind_a_running_matmul_share_the_next_one():
    linear = GatedLinear()
    head = CoalescedHead(linear)
    inputs = [torch.randn(1, 1, WIDTH), torch.randn(1, 1, WIDTH), torch.randn(1, 3, WIDTH), torch.randn(1, 1, WIDTH)]
    threads, results = run_threads(head, inputs)
    threads[0].start()
    assert linear.entered.wait(10)
    for t in threads[1:]:
        t.start()
    poll_until(lambda: len(head._queue) == 3, 10, "three calls queued behind the first", interval=0.001)
    linear.release.set()
    for t in threads:
        t.join(10)
    assert linear.row_counts == [1, 5]  # the lone first call alone, then the three waiting calls together
    assert (head.rounds, head.calls) == (2, 4)
    for x, y in zip(inputs, results, strict=True):
        assert y.shape == (*x.shape[:-1], VOCAB)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, linear.weight))


def test_an_error_reaches_every_caller_of_its_round_and_the_head_recovers():
    calls = []

    def forward(hidden):
        calls.append(hidden.shape)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return hidden * 2

    head = CoalescedHead(forward)
    with pytest.raises(RuntimeError, match="boom"):
        head(torch.ones(1, 1, WIDTH))
    torch.testing.assert_close(head(torch.ones(1, 1, WIDTH)), torch.full((1, 1, WIDTH), 2.0))


def test_install_wraps_the_models_head_once():
    model = torch.nn.Module()
    model.lm_head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
    x = torch.randn(2, 1, WIDTH)
    expected = model.lm_head(x)
    wrapper = install(model)
    assert install(model) is wrapper
    torch.testing.assert_close(model.lm_head(x), expected)
    assert wrapper.calls == 1
