"""The real-time scoring service: the same model.pt as batch scoring, over HTTP (docs/SERVING.md).

requests (a body → a ScoreRequest) → batcher (concurrent requests into micro-batches) → engine (a batch
validated and scored as one table, split back per request) → app (the HTTP endpoints) → server (uvicorn);
slot holds the served model and reloads it, metrics counts for /metrics.
"""
