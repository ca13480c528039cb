"""Dynamic micro-batching: requests queue up, and one worker thread scores them a batch at a time.

A batch starts with the oldest waiting request and takes every request already queued, then waits up to
`max_wait_ms` for more, until it holds `max_customers` customers. While the worker scores a batch the next
one fills up, so under load batches grow by themselves and the fixed cost of a pass (validation, encoding,
the forward's launch) is paid once for many requests; with one client a request waits at most
`max_wait_ms`. One worker keeps the model's threads to themselves (a second pass at once would only share
the same cores) and leaves the event loop free to read and answer requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from churnwatch.config.schema import BatchingConfig
from churnwatch.serving.metrics import ServiceMetrics
from churnwatch.serving.requests import ScoreRequest

log = logging.getLogger(__name__)
ScoreBatch = Callable[[Sequence[ScoreRequest]], list[Any]]
"""Requests → one answer (or exception) per request, in order."""


@dataclass
class _Pending:
    request: ScoreRequest
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class ShuttingDown(RuntimeError):
    """The service stopped before this request's batch ran."""


class MicroBatcher:
    """Queues requests and scores them in batches on one worker thread (`submit` from the event loop)."""

    def __init__(self, score: ScoreBatch, config: BatchingConfig, metrics: ServiceMetrics):
        self.score = score
        self.config = config
        self.metrics = metrics
        self._waiting: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="churnwatch-score")

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="churnwatch-batcher")

    async def stop(self) -> None:
        """Stop taking batches; requests still queued are answered with `ShuttingDown`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._waiting:
            pending = self._waiting.popleft()
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown("the service is shutting down"))
        self._worker.shutdown(wait=True)

    async def submit(self, request: ScoreRequest) -> Any:
        """The request's answer, once its batch has run."""
        if self._arrived is None or self._task is None or self._task.done():
            raise ShuttingDown("the service is not running")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(request, future))
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            started = time.perf_counter()
            for pending in batch:
                self.metrics.queue_seconds.observe(started - pending.queued)
            try:
                answers = await loop.run_in_executor(self._worker, self.score, [p.request for p in batch])
            except Exception as exc:  # noqa: BLE001 (score answers per request; this is a last resort)
                log.exception("a micro-batch failed")
                answers = [exc] * len(batch)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_requests.observe(len(batch))
            self.metrics.batch_customers.observe(sum(len(p.request.ids) for p in batch))
            for pending, answer in zip(batch, answers, strict=True):
                if pending.future.done():  # the client went away
                    continue
                if isinstance(answer, BaseException):
                    pending.future.set_exception(answer)
                else:
                    pending.future.set_result(answer)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        """The next batch: the oldest request, everything queued, then what arrives within max_wait_ms."""
        first = await self._next(None)
        batch, customers = [first], len(first.request.ids)
        if not self.config.enabled:
            return batch
        deadline = loop.time() + float(self.config.max_wait_ms) / 1000.0
        while customers < int(self.config.max_customers):
            pending = await self._next(deadline - loop.time())
            if pending is None:
                break
            if customers + len(pending.request.ids) > int(self.config.max_customers):
                self._waiting.appendleft(pending)  # it starts the next batch
                break
            batch.append(pending)
            customers += len(pending.request.ids)
        return batch

    async def _next(self, timeout: float | None) -> _Pending | None:
        """The oldest waiting request, waiting for one up to `timeout` seconds (None: for ever)."""
        assert self._arrived is not None
        while not self._waiting:
            self._arrived.clear()
            if timeout is None:
                await self._arrived.wait()
                continue
            if timeout <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return None
            timeout = 0.0  # woken: take what arrived, wait no longer
        return self._waiting.popleft()
