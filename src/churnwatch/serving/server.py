"""Running the service: uvicorn on a bound socket, one process or `workers` processes sharing it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile

import uvicorn

from churnwatch.config.schema import ServeConfig
from churnwatch.errors import ConfigError
from churnwatch.serving.app import CONFIG_ENV, create_app
from churnwatch.serving.slot import load_served

log = logging.getLogger(__name__)


def serve(config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM: requests in flight are answered first)."""
    workers = int(config.workers)
    options = {
        "host": config.host,
        "port": int(config.port),
        "log_level": str(config.log_level).lower(),
        "log_config": None,  # the command's logging (Hydra's) stays in charge
        "access_log": str(config.log_level).lower() == "debug",
        "timeout_graceful_shutdown": 30,
    }
    if workers == 1:
        app = create_app(config)
        server = uvicorn.Server(uvicorn.Config(app, **options))
        sock = _listening(server.config)
        _say_where(config, sock.getsockname()[1], workers)
        server.run(sockets=[sock])
        return
    if int(config.port) == 0:
        raise ConfigError("port=0 needs workers=1: the workers share one port, which must be known")
    load_served(config)  # a bad model file fails here, once, before workers start
    metrics_dir = tempfile.mkdtemp(prefix="churnwatch-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config), default=str)
    _say_where(config, int(config.port), workers)
    try:
        uvicorn.run("churnwatch.serving.app:app_from_env", factory=True, workers=workers, **options)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _listening(config: uvicorn.Config) -> socket.socket:
    """The bound socket, already listening: a client that connects once the address is printed waits in
    the backlog until the app is ready, instead of being refused."""
    sock = config.bind_socket()
    sock.listen(config.backlog)
    return sock


def _say_where(config: ServeConfig, port: int, workers: int) -> None:
    print(
        f"churnwatch serve: {config.model_path} on http://{config.host}:{port} "
        f"({workers} worker{'s' if workers > 1 else ''}; POST /v1/score, GET /healthz, /v1/model, /metrics)",
        flush=True,
    )
