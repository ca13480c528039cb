"""The scoring service's HTTP interface (FastAPI on uvicorn): `create_app(config)`.

    POST /v1/score    events (+ customers) of one or many customers → the columns of `churnwatch score`
    GET  /healthz     up, and which model serves (and the last refused file, if any)
    GET  /v1/model    the served model: contract, test metrics, tier cut-offs, versions
    POST /v1/reload   check model_path for a new file now (it is also checked every reload_seconds)
    GET  /metrics     Prometheus text: requests, latency, batches, reloads

Every refusal is a 4xx with {"error": "<one line>"}: 400 malformed, 413 too large, 415 unknown type, 422
invalid content (the same validation as batch scoring, naming the column and row). An unexpected failure is a
500 with one line, never a traceback; the log has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from omegaconf import OmegaConf
from starlette.concurrency import run_in_threadpool

from churnwatch import __version__
from churnwatch.config.schema import ServeConfig
from churnwatch.serving.batcher import MicroBatcher, ShuttingDown
from churnwatch.serving.engine import USER_ERRORS, ScoreResult, score_batch
from churnwatch.serving.metrics import CONTENT_TYPE, ServiceMetrics
from churnwatch.serving.requests import (
    ARROW,
    JSON,
    PARQUET,
    RequestError,
    ScoreRequest,
    end_of_today,
    parse_request,
)
from churnwatch.serving.slot import ModelSlot, ServedModel

log = logging.getLogger(__name__)
CONFIG_ENV = "CHURNWATCH_SERVE_CONFIG"
"""The config of a worker process (`churnwatch serve workers=N`), as JSON."""
LARGE = 1 << 20
"""Bodies and answers above this many bytes (or rows) are parsed and written off the event loop."""
REQUEST_BODY = {
    "required": True,
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "events": {"description": "rows [{column: value}] or columns {column: [values]}"},
                    "customers": {"description": "the customer attributes, rows or columns (optional)"},
                    "as_of": {"type": "string", "format": "date", "description": "default: end of today"},
                    "drivers": {"type": "boolean", "description": "false: no driver columns (faster)"},
                },
            }
        },
        ARROW: {"schema": {"type": "string", "format": "binary", "description": "the events table"}},
        PARQUET: {"schema": {"type": "string", "format": "binary", "description": "the events table"}},
    },
}


def create_app(config: ServeConfig | Any) -> FastAPI:
    """The service for one model file. The model is loaded here, so a bad file fails before any port
    is bound."""
    config = _typed_config(config)
    metrics = ServiceMetrics()
    slot = ModelSlot(config)
    metrics.serving(slot.current.sha256)

    def score(requests: Sequence[ScoreRequest]) -> list[Any]:
        model = slot.current  # the whole batch scores with one model, even if a reload lands meanwhile
        answers = score_batch(model.scorer, model.ranker, requests)
        metrics.customers.inc(sum(len(a.scores) for a in answers if isinstance(a, ScoreResult)))
        return [(a, model) if isinstance(a, ScoreResult) else a for a in answers]

    batcher = MicroBatcher(score, config.batching, metrics)

    async def reload(force: bool = False) -> dict[str, Any]:
        outcome = await run_in_threadpool(slot.reload, force)
        if outcome.status != "unchanged":
            metrics.reloads.labels(outcome.status).inc()
            metrics.serving(slot.current.sha256)
        return {"status": outcome.status, "message": outcome.message, "sha256": outcome.sha256}

    async def watch() -> None:
        while True:
            await asyncio.sleep(float(config.reload_seconds))
            await reload()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        quiet_collector()
        await batcher.start()
        watcher = asyncio.create_task(watch()) if float(config.reload_seconds) > 0 else None
        log.info("serving %s (sha256 %s)", config.model_path, slot.current.sha256[:12])
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await batcher.stop()

    app = FastAPI(
        title="churnwatch",
        version=__version__,
        summary="Churn risk, tier, drivers and action per customer, from their events, on demand.",
        lifespan=lifespan,
    )
    app.state.slot, app.state.batcher, app.state.metrics, app.state.config = slot, batcher, metrics, config

    app.add_middleware(Counted, metrics=metrics)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {_one_line(exc)}")

    @app.post("/v1/score", openapi_extra={"requestBody": REQUEST_BODY})
    async def score_customers(request: Request) -> Response:
        """Score the customers in the body: one row each, ranked within the request."""
        body = await _body(request, int(float(config.limits.max_body_mb) * (1 << 20)))
        model = slot.current
        args = (
            body,
            request.headers.get("content-type"),
            dict(request.query_params),
            config.limits,
            model.scorer.schema.customer_id,
            end_of_today(model.scorer.schema.timezone),
        )
        parsed = await run_in_threadpool(parse_request, *args) if len(body) > LARGE else parse_request(*args)
        try:
            result, served = await batcher.submit(parsed)
        except USER_ERRORS as exc:
            return _error(422, _one_line(exc))
        except ShuttingDown as exc:
            return _error(503, str(exc))
        except Exception as exc:  # noqa: BLE001 (one line to the client, the traceback to the log)
            log.error("scoring failed", exc_info=exc)
            return _error(500, f"internal error: {_one_line(exc)}")
        accept = request.headers.get("accept", JSON)
        if len(result.scores) * 40 > LARGE:
            return await run_in_threadpool(_answer, result, served, accept)
        return _answer(result, served, accept)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Up, and which model serves; `refused`: the last new model file that failed to load."""
        refused = slot.refused
        return {
            "status": "ok",
            "model_sha256": slot.current.sha256,
            "reloads": slot.reloads,
            "refused": refused[1] if refused else None,
        }

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        """The served model: its file, data contract, test metrics, tier cut-offs and versions."""
        return slot.current.info()

    @app.post("/v1/reload")
    async def reload_now() -> JSONResponse:
        """Check model_path for a new file now; 409 if the new file was refused (the old model serves)."""
        outcome = await reload(force=False)
        return JSONResponse(outcome, status_code=409 if outcome["status"] == "refused" else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


class Counted:
    """ASGI middleware: every request into the metrics (endpoint, status, seconds), 500s included."""

    def __init__(self, app: Any, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.request(scope["path"], status[0], time.perf_counter() - t0)


def quiet_collector() -> None:
    """Keep Python's cyclic garbage collector off the request path. The libraries and the model leave
    millions of long-lived objects, and a full collection scanning them took 0.2 s in the middle of a
    batch. They are frozen out of its scans, and collections come less often (a request leaves few
    cycles)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def app_from_env() -> FastAPI:
    """The app of a worker process: the config `churnwatch serve` put in CHURNWATCH_SERVE_CONFIG."""
    return create_app(json.loads(os.environ[CONFIG_ENV]))


def _typed_config(values: ServeConfig | Any) -> ServeConfig:
    """A ServeConfig, its interpolations resolved (verify_key's environment variable), from one built in
    Python, a mapping or a composed config; nested blocks typed too."""
    given = dataclasses.asdict(values) if isinstance(values, ServeConfig) else values
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ServeConfig), given))


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is larger than `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(
            413, f"the body is {int(length):,} bytes; the limit is {limit:,} (limits.max_body_mb)"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over {limit:,} bytes (limits.max_body_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(result: ScoreResult, model: ServedModel, accept: str) -> Response:
    """The scored rows as JSON (default), an Arrow IPC stream or parquet, by the Accept header."""
    headers = {
        "X-Churnwatch-Model": model.sha256,
        "X-Churnwatch-As-Of": str(result.as_of.date()),
        "X-Churnwatch-Rows-Read": str(result.events.rows_read),
        "X-Churnwatch-Rows-Kept": str(result.events.rows_kept),
    }
    if ARROW in accept or PARQUET in accept:
        table = pa.Table.from_pandas(result.scores, preserve_index=False)
        sink = io.BytesIO()
        if ARROW in accept:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        else:
            pq.write_table(table, sink)
        return Response(sink.getvalue(), media_type=ARROW if ARROW in accept else PARQUET, headers=headers)
    head = {
        "model": {"sha256": model.sha256, "created_at": model.meta.get("created_at")},
        "as_of": str(result.as_of.date()),
        "customers": len(result.scores),
        "validation": {
            "events": result.events.as_dict(),
            "customers": result.customers.as_dict() if result.customers is not None else None,
        },
        "warnings": list(result.warnings),
    }
    body = json.dumps(head, ensure_ascii=False)[:-1] + ', "scores": ' + result.json_rows + "}"
    return Response(body.encode(), media_type=JSON, headers=headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
