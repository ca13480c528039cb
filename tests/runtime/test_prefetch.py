"""Reading ahead (`ahead`): the items of a plain loop, in order, the next one made on another thread before
the caller asks for it, lazily (one item ahead, no more), and a failure raised where the loop would raise
it."""

from __future__ import annotations

import threading

import pytest
import torch

from churnwatch.runtime.hardware import leave_a_core
from churnwatch.runtime.prefetch import ahead


def test_results_come_in_order_and_the_next_is_made_on_another_thread_while_the_caller_holds_this_one():
    started = [threading.Event() for _ in range(4)]
    threads = {}

    def work(k: int) -> int:
        threads[k] = threading.get_ident()
        started[k].set()
        return k * k

    got = []
    for k, result in enumerate(ahead(map(work, range(4)))):
        if k + 1 < 4:  # the next item's work began without the caller asking for it
            assert started[k + 1].wait(timeout=30)
        assert not any(s.is_set() for s in started[k + 2 :])  # but not the one after: two results at most
        got.append(result)
    assert got == [0, 1, 4, 9]
    assert threading.get_ident() not in threads.values()
    assert list(ahead(map(work, []))) == []


def test_a_failure_is_raised_after_the_items_before_it_as_a_loop_would():
    def work(k: int) -> int:
        if k == 2:
            raise ValueError("item 2 is bad")
        return k

    got = []
    with pytest.raises(ValueError, match="item 2 is bad"):
        for result in ahead(map(work, range(5))):
            got.append(result)
    assert got == [0, 1]


def test_torch_leaves_a_core_only_while_asked_and_gets_its_threads_back_after_a_failure():
    before = torch.get_num_threads()
    with leave_a_core(False):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), leave_a_core():
        assert torch.get_num_threads() == max(1, before - 1)
        raise RuntimeError("stop")
    assert torch.get_num_threads() == before
