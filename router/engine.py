"""The router's state and lifetime, shared by a client and every copy of it.

`RouterEngine` holds what routing needs: the config in force and the request path built from it,
live stats, circuits, cache, shared state, observers, the pooled connections to the backends,
and the background work (load probes, shared-state sync, usage file, config watch). The openai
subclasses in `router/client.py` are thin doors onto it: `AsyncRouter.copy()` makes a new client
over the same engine, so stats, circuits and cache are one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx2
import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from providers import Answered
from providers.http import backend_client as pooled_client
from router.cache import ResponseCache
from router.config import ConfigError, ConfigIssue, RouterConfig, load_config
from router.config.routes import RouteTable
from router.observe.logs import register_secret
from router.observe.usage import UsageLedger, UsageRow
from router.path.circuit import Circuits
from router.path.events import EventKind, Hook, Hooks, Observer, Observers
from router.path.health import DeploymentHealth, health_report
from router.path.hints import RouteHints
from router.path.homes import ResponseHomes
from router.path.load import LoadPoller
from router.path.pipeline import RequestPath
from router.path.record import RouteRecord
from router.path.shared import SharedState
from router.path.stats import MemoryStats
from router.path.streaming import RouterStream

logger = logging.getLogger("router")
NOT_SENT = (openai.NotGiven, openai.Omit)
"""openai's markers for an argument the caller did not give."""
ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | RouterConfig
CONFIG_ENV = "INFERENCE_ROUTER_CONFIG"
"""The environment variable naming the config file `AsyncRouter()` reads when given none."""


def jsonable(value: Any) -> Any:
    """Request values as JSON data; pydantic objects (e.g. a previous reply's message) by their set fields,
    openai's `NOT_GIVEN`/`omit` markers dropped."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if not isinstance(v, NOT_SENT)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def timeout_seconds(timeout: Any) -> float | None:
    """openai's per-request `timeout` (seconds, an httpx Timeout or its dict) as one call deadline."""
    if timeout is None or isinstance(timeout, NOT_SENT):
        return None
    if isinstance(timeout, (int, float)):
        return float(timeout)
    if isinstance(timeout, Mapping):
        parts = list(timeout.values())
    else:
        parts = [getattr(timeout, name, None) for name in ("read", "connect", "write", "pool")]
    numbers = [p for p in parts if isinstance(p, (int, float))]
    return max(numbers) if numbers else None


def as_config(source: ConfigSource | None, env: Mapping[str, str] | None) -> RouterConfig:
    """A config from a path, mapping or `RouterConfig`; None reads the file `INFERENCE_ROUTER_CONFIG` names."""
    if source is None:
        named = (os.environ if env is None else env).get(CONFIG_ENV)
        if not named:
            raise ConfigError(
                [
                    ConfigIssue(
                        "<config>",
                        None,
                        "",
                        f"no config given: pass a path or mapping, or set {CONFIG_ENV} to a YAML/TOML file",
                    )
                ]
            )
        source = named
    return source if isinstance(source, RouterConfig) else load_config(source, env=env)


def _exporters(config: RouterConfig) -> tuple[list[Observer], Any]:
    """The tracing and metrics observers the `telemetry:` section asks for (and the metrics object)."""
    telemetry = config.telemetry
    observers: list[Observer] = []
    metrics = None
    if telemetry.otel != "off":
        from router.observe.otel import OTelObserver, otel_available

        if telemetry.otel == "on" or otel_available():
            try:
                observers.append(OTelObserver())
            except ImportError as exc:
                raise ConfigError([ConfigIssue("<config>", None, "telemetry.otel", str(exc))]) from None
    if telemetry.prometheus:
        from router.observe.metrics import PrometheusMetrics

        try:
            metrics = PrometheusMetrics()
        except ImportError as exc:
            raise ConfigError([ConfigIssue("<config>", None, "telemetry.prometheus", str(exc))]) from None
        observers.append(metrics)
        if telemetry.prometheus_port is not None:
            metrics.serve(telemetry.prometheus_port)
    return observers, metrics


class RouterEngine:
    """Everything a router is besides its openai surface; one per router, shared by its copies."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        backend_client: httpx2.AsyncClient | None = None,
        seed: int | None = None,
        watch: tuple[Path, float, str | None] | None = None,
    ) -> None:
        self.config = config
        self._owns_client = backend_client is None
        self.client = backend_client or pooled_client()
        """The pooled connections to the backends (aiohttp's pool behind httpx2's interface, `providers/http.py`)."""
        self.stats = MemoryStats()
        self.cache = ResponseCache(config.cache) if config.cache is not None else None
        self.shared = self._shared_state(config)
        self.hooks = Hooks()
        self.ledger = UsageLedger(config.usage.path, flush_s=config.usage.flush_s)
        exporters, self.metrics = _exporters(config)
        self.observers = Observers([self.hooks, self.ledger, *exporters])
        self.rng = random.Random(seed)
        self.circuits = Circuits(config.circuit)
        self.homes = ResponseHomes()
        self.path = self._request_path(config)
        self._retired: list[ResponseCache | SharedState] = []
        self._background: anyio.abc.TaskGroup | None = None
        self._users = 0
        self.watch = watch
        """(file, poll interval, hash of the content the config was loaded from), when watched."""
        self._reloaded: anyio.Event | None = None
        self.reload_error: ConfigError | None = None
        self.closed = False

    @staticmethod
    def _shared_state(config: RouterConfig) -> SharedState | None:
        state = config.state
        if state.backend != "redis":
            return None
        return SharedState(
            state.url or "redis://127.0.0.1:6379/0", namespace=state.namespace, refresh_s=state.refresh_s
        )

    def _request_path(self, config: RouterConfig) -> RequestPath:
        table = RouteTable(config)
        for secret in table.secrets:
            register_secret(secret)  # never in a log line, whoever logs it
        return RequestPath(
            table,
            self.client,
            self.stats,
            self.rng,
            cache=self.cache,
            shared=self.shared,
            observers=self.observers,
            circuits=self.circuits,
            homes=self.homes,
        )

    # --- the one way in: every door hands its request here ------------------------------

    async def route(
        self,
        endpoint: str,
        model: str,
        body: dict[str, Any],
        *,
        stream: bool,
        hints: RouteHints,
        timeout_s: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
        caller_wants_usage: bool = False,
    ) -> ChatCompletion | Answered | RouterStream:
        """Route one request of any endpoint through the request path (read once: a reload mid-call
        doesn't change this call's config)."""
        path = self.path
        call, tiers = path.start(
            model,
            body,
            stream=stream,
            hints=hints,
            timeout_s=timeout_s,
            extra_headers=extra_headers,
            extra_query=extra_query,
            endpoint=endpoint,
        )
        return await path.serve(call, tiers, caller_wants_usage=caller_wants_usage)

    # --- reloads, background work, lifetime ---------------------------------------------

    def on(self, event: EventKind, callback: Hook) -> Callable[[], None]:
        """Register a hook; returns a function that unregisters it."""
        return self.hooks.on(event, callback)

    def usage(self, *, group_by: tuple[str, ...], since_s: float | None) -> list[UsageRow]:
        """Usage and cost totals, grouped."""
        return self.ledger.usage(group_by=group_by, since_s=since_s)

    async def reload(self, source: ConfigSource, *, env: Mapping[str, str] | None = None) -> RouterConfig:
        """Swap in a new configuration atomically (see `AsyncRouter.reload`)."""
        try:  # reading and checking a file is blocking work: off the event loop
            config = await anyio.to_thread.run_sync(as_config, source, env)
        except ConfigError as exc:
            self.reload_error = exc
            raise
        if self.config.cache != config.cache:
            if self.cache is not None:
                self._retired.append(self.cache)  # calls in flight may still use it; closed with the router
            self.cache = ResponseCache(config.cache) if config.cache is not None else None
        if self.config.state != config.state:
            if self.shared is not None:
                self._retired.append(self.shared)
            self.shared = self._shared_state(config)
        if (self.config.usage, self.config.telemetry) != (config.usage, config.telemetry):
            logger.warning("reload: `usage` and `telemetry` changes take effect when a new router is made")
        path = self._request_path(config)
        self.stats.keep_only({d.candidate.id for route in path.table.routes.values() for d in route.deployments})
        self.path, self.config, self.reload_error = path, config, None
        if self._reloaded is not None:
            self._reloaded.set()  # the load probes and shared-state sync follow the new table
        logger.info("reloaded the config: %d backends, %d models", len(config.backends), len(config.models))
        return config

    async def watch_config(
        self, path: str | os.PathLike[str], *, interval_s: float = 1.0, loaded: str | None = None
    ) -> None:
        """Reload whenever the file's content changes, until cancelled (see `AsyncRouter.watch_config`)."""
        file = Path(path)
        seen = loaded or await anyio.to_thread.run_sync(hash_of, file)  # what the config in force was read from
        if seen is None:
            raise FileNotFoundError(f"cannot watch {path}: it cannot be read")
        while True:
            await anyio.sleep(interval_s)
            current = await anyio.to_thread.run_sync(hash_of, file)
            if current == seen or current is None:
                continue
            seen = current
            try:
                await self.reload(Path(path))
            except ConfigError as exc:
                logger.error("config change in %s not applied; keeping the previous config:\n%s", path, exc)

    async def run_background(self) -> None:
        """Poll self-hosted backends' load, sync shared state, write usage totals and watch the config
        file (when asked) until cancelled."""
        async with anyio.create_task_group() as tasks:
            if self.ledger.path is not None:
                tasks.start_soon(self.ledger.run)
            if self.watch is not None:
                file, interval_s, loaded = self.watch
                tasks.start_soon(partial(self.watch_config, file, interval_s=interval_s, loaded=loaded))
            while True:  # the config-bound work restarts after each reload
                self._reloaded = anyio.Event()
                async with anyio.create_task_group() as bound:
                    self._start_config_bound(bound)
                    await self._reloaded.wait()
                    bound.cancel_scope.cancel()

    def _start_config_bound(self, tasks: anyio.abc.TaskGroup) -> None:
        """The background work that follows the config: load probes and shared-state sync."""
        targets = self.path.table.probe_targets()
        if targets:
            probes = self.config.load_probes
            poller = LoadPoller(
                targets,
                self.client,
                self.stats.observe_server_load,
                interval_s=probes.interval_s,
                timeout_s=probes.timeout_s,
                max_backoff=2.0,  # a dead server is polled every 2 intervals: its return is news for its circuit
                on_answer_again=self.path.server_answers_again,
            )
            tasks.start_soon(poller.run)
        if self.shared is not None:
            ids = {d.candidate.id for route in self.path.table.routes.values() for d in route.deployments}
            tasks.start_soon(self.shared.run, self.path.circuits, ids, self.stats)

    def explain(
        self, model: str, body: dict[str, Any], *, stream: bool, hints: RouteHints, endpoint: str = "chat"
    ) -> RouteRecord:
        """How a call would be routed, without sending it."""
        return self.path.explain(model, body, stream=stream, hints=hints, endpoint=endpoint)

    def health(self) -> list[DeploymentHealth]:
        """Each deployment's circuit state, cooldown remaining, recent errors, stats and server load."""
        path = self.path
        return health_report(path.table, self.stats, path.circuits, anyio.current_time())

    async def probe_load(self) -> None:
        """Read every self-hosted backend's load once now (what the background poller does)."""
        poller = LoadPoller(
            self.path.table.probe_targets(),
            self.client,
            self.stats.observe_server_load,
            timeout_s=self.config.load_probes.timeout_s,
        )
        await poller.poll_once()

    async def start(self) -> None:
        """Start the background work, once for however many clients (copies) enter the router."""
        self._users += 1
        if self._background is None:
            self._background = anyio.create_task_group()
            await self._background.__aenter__()
            self._background.start_soon(self.run_background)

    async def stop_background(self) -> None:
        """Stop the background work now."""
        if self._background is not None:
            background, self._background = self._background, None
            background.cancel_scope.cancel()
            await background.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Stop background work and close connections, stores and files; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        await self.stop_background()
        await self.ledger.aclose()
        for retired in self._retired:
            await retired.aclose()
        self._retired.clear()
        if self.cache is not None:
            await self.cache.aclose()
        if self.shared is not None:
            await self.shared.sync(self.path.circuits, ())  # publish the last openings before leaving
            await self.shared.aclose()
        if self._owns_client:
            await self.client.aclose()
        if self.metrics is not None:
            await anyio.to_thread.run_sync(self.metrics.close)  # its scrape port, if it serves one


def watched(source: ConfigSource | None, watch: bool | float) -> tuple[Path, float, str | None] | None:
    """What `watch=` asks for: the file, its poll interval, and its content's hash — taken before the
    config is read, so an edit in between differs from it and is reloaded."""
    if watch is False:
        return None
    if source is None:
        source = os.environ.get(CONFIG_ENV)
    if source is None or isinstance(source, (Mapping, RouterConfig)):
        raise ValueError("watch= needs a config file path")
    return Path(source), 1.0 if watch is True else float(watch), hash_of(Path(source))


def hash_of(path: Path) -> str | None:
    """A hash of the file's content (None: unreadable, e.g. mid-replace); blocking, so the loop calls it in a thread."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
