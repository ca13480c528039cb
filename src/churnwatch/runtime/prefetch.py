"""Make the next item while the caller uses this one: a streamed run's reading and encoding (mostly
single-threaded numpy, pandas and Arrow, which release the GIL in their kernels) overlap the model's
forward pass, and reading a file's next batch overlaps splitting this one (docs/BENCHMARKS.md, "On the
AMX Xeon again")."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def ahead(items: Iterable[T]) -> Iterator[T]:
    """The items of `items`, in order, item k + 1 pulled on a background thread while the caller holds
    item k: at most two live at once. Lazy, so `ahead(map(work, parts))` runs `work` a part ahead. An
    exception while making an item is raised to the caller when it reaches that item, after the items
    before it, as a plain loop would raise it."""
    source = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="churnwatch-ahead") as pool:
        pending = pool.submit(next, source, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, source, _END)
            yield item
            del item
