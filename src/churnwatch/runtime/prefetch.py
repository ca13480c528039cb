"""Work on the next item while the caller uses this one: a streamed run's reading and encoding (mostly
single-threaded numpy, pandas and Arrow, which release the GIL in their kernels) overlap the model's
forward pass on the other core (docs/BENCHMARKS.md, "Reading ahead")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def one_ahead(work: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """`work(item)` for each item, in order, item k + 1's computed on a background thread while the caller
    holds item k's result: at most two results live at once. An exception in `work` is raised to the
    caller when it reaches that item, after the items before it, as a plain loop would raise it."""
    items = list(items)
    with ThreadPoolExecutor(1, thread_name_prefix="churnwatch-ahead") as pool:
        pending = pool.submit(work, items[0]) if items else None
        for k in range(len(items)):
            result = pending.result()
            pending = pool.submit(work, items[k + 1]) if k + 1 < len(items) else None
            yield result
            del result
