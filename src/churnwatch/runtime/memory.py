"""Give freed memory back to the operating system, so a long streamed run's peak RSS stays flat."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import pyarrow as pa


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_free_memory() -> None:
    """Hand freed memory back between the phases and parts of a run: Arrow's pool (mimalloc/jemalloc) and
    the C heap (glibc's malloc_trim; skipped elsewhere) both keep it otherwise. Without it a 4M-customer
    run's peak RSS crept up part after part and through ranking (docs/BENCHMARKS.md)."""
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
