"""Running the gateway: uvicorn (httptools, uvloop) with one router per worker process.

uvicorn because it is the most used and best kept ASGI server, with graceful shutdown (stop
accepting, let requests in flight finish within a grace period, then the app's lifespan
shutdown) and a worker supervisor whose SIGHUP replaces workers one at a time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from router.config import GatewayConfig, RouterConfig
from router.gateway.app import CONFIG_ENV
from router.observe.metrics import MULTIPROCESS_ENV


def serve(
    config_path: str | os.PathLike[str],
    config: RouterConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> int:
    """Serve `config_path` until told to stop; the arguments override the config's `gateway` section."""
    settings = config.gateway
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())  # each worker process reads it
    workers = workers or settings.workers
    logging.getLogger("router").setLevel(logging.INFO)
    if not logging.getLogger("router").handlers or all(
        isinstance(h, logging.NullHandler) for h in logging.getLogger("router").handlers
    ):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("router").addHandler(handler)  # redaction is a filter on this logger: keys stay out
    # uvicorn re-raises the SIGTERM it shut down gracefully for: a graceful stop is a clean exit (0)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    with _shared_metrics(workers > 1):
        _run(config_path, settings, host=host, port=port, workers=workers)
    return 0


@contextlib.contextmanager
def _shared_metrics(several: bool) -> Iterator[None]:
    """Several workers: prometheus-client's multiprocess mode in a folder of their own (unless one is
    set already), so `/metrics` on any worker answers for all of them; the folder goes at exit."""
    if not several or os.environ.get(MULTIPROCESS_ENV) or importlib.util.find_spec("prometheus_client") is None:
        yield
        return
    folder = tempfile.mkdtemp(prefix="inference-router-metrics-")
    os.environ[MULTIPROCESS_ENV] = folder  # the workers (spawned) import prometheus-client after this
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _run(
    config_path: str | os.PathLike[str], settings: GatewayConfig, *, host: str | None, port: int | None, workers: int
) -> None:
    uvicorn.run(
        "router.gateway.app:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers if workers > 1 else None,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_level="info",
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        limit_concurrency=_connection_backstop(settings.max_connections),
        server_header=False,
        date_header=True,
    )


def _connection_backstop(max_requests: int | None) -> int | None:
    """uvicorn's own limit, above the app's: requests past `max_connections` get the app's 503 in
    OpenAI's shape; uvicorn's plain-text 503 is left for floods of (idle) connections beyond it."""
    return None if max_requests is None else 2 * max_requests + 16
