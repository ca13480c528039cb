"""What `/metrics` says, in Prometheus's text format: requests by endpoint and status, latency, customers
scored, micro-batch sizes and queueing, model reloads and the served model.

With several worker processes the counts live in files (prometheus_client's multiprocess mode, the
directory in PROMETHEUS_MULTIPROC_DIR, which `churnwatch serve workers=N` sets up) and every worker's
`/metrics` adds all of them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)
CONTENT_TYPE = CONTENT_TYPE_LATEST
ENDPOINTS = ("/v1/score", "/v1/model", "/v1/reload", "/healthz", "/metrics")
"""Paths counted under their own name; any other path counts as 'other' (labels stay few)."""


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServiceMetrics:
    """The service's metrics, in a registry of its own (two apps in one process never share counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "churnwatch_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "churnwatch_request_seconds",
            "request latency, body read to response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "churnwatch_request_errors",
            "requests answered with an error, by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.customers = Counter("churnwatch_customers_scored", "customers scored", registry=r)
        self.batch_customers = Histogram(
            "churnwatch_batch_customers", "customers per micro-batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "churnwatch_batch_requests", "requests per micro-batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "churnwatch_queue_seconds",
            "time a request waited for its batch to start",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "churnwatch_batch_seconds", "time to score one micro-batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.reloads = Counter(
            "churnwatch_model_reloads",
            "checks that found a new model file, by outcome",
            ["outcome"],
            registry=r,
        )
        self.model = Gauge(
            "churnwatch_model_info",
            "1 for the model file being served (its sha256)",
            ["sha256"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._sha: str | None = None

    def serving(self, sha256: str) -> None:
        """The model now served: its info gauge at 1, the previous one removed."""
        if self._sha is not None and self._sha != sha256:
            self.model.remove(self._sha)
        self.model.labels(sha256).set(1)
        self._sha = sha256

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        endpoint = endpoint if endpoint in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        if multiprocess_dir():
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
