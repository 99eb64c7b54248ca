"""`AsyncRouter` and `Router`: drop-ins for `openai.AsyncOpenAI` / `openai.OpenAI` chat completions.

Change one line — the client construction — and `client.chat.completions.create(...)` keeps
its arguments, its return types (`ChatCompletion`, a stream of `ChatCompletionChunk`) and its
exception classes, while each call is routed across the configured backends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import anyio
import anyio.abc
import anyio.to_thread
import httpx2
import openai
from anyio.from_thread import BlockingPortal
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from pydantic import BaseModel

from router.cache import ResponseCache
from router.config import ConfigError, ConfigIssue, RouterConfig, load_config
from router.config.routes import RouteTable
from router.observe.logs import register_secret
from router.observe.usage import UsageLedger, UsageRow
from router.path.circuit import Circuits
from router.path.events import EventKind, Hook, Hooks, Observer, Observers
from router.path.health import DeploymentHealth, health_report
from router.path.hints import RouteHints
from router.path.load import LoadPoller
from router.path.pipeline import RequestPath
from router.path.record import RouteRecord, attach_route
from router.path.shared import SharedState
from router.path.stats import MemoryStats
from router.path.streaming import RouterStream

T = TypeVar("T")
logger = logging.getLogger("router")
_NOT_SENT = (openai.NotGiven, openai.Omit)
ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | RouterConfig


def _jsonable(value: Any) -> Any:
    """Request values as JSON data; pydantic objects (e.g. a previous reply's message) by their set fields."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not isinstance(v, _NOT_SENT)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _timeout_seconds(timeout: Any) -> float | None:
    """openai's per-request `timeout` (seconds or an httpx Timeout) as one call deadline."""
    if timeout is None or isinstance(timeout, _NOT_SENT):
        return None
    if isinstance(timeout, (int, float)):
        return float(timeout)
    parts = [getattr(timeout, name, None) for name in ("read", "connect", "write", "pool")]
    numbers = [p for p in parts if isinstance(p, (int, float))]
    return max(numbers) if numbers else None


def _as_config(source: ConfigSource, env: Mapping[str, str] | None) -> RouterConfig:
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


class AsyncCompletions:
    """`router.chat.completions`: the one call callers make."""

    def __init__(self, router: AsyncRouter) -> None:
        self._router = router

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: Literal[False] | None = ...,
        route: RouteHints | Mapping[str, Any] | None = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, Any] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        timeout: Any = ...,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: Literal[True],
        route: RouteHints | Mapping[str, Any] | None = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, Any] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        timeout: Any = ...,
        **params: Any,
    ) -> RouterStream: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: bool,
        route: RouteHints | Mapping[str, Any] | None = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_query: Mapping[str, Any] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        timeout: Any = ...,
        **params: Any,
    ) -> ChatCompletion | RouterStream: ...

    async def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: bool | None = False,
        route: RouteHints | Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Any = None,
        **params: Any,
    ) -> ChatCompletion | RouterStream:
        """Route one chat completion; same arguments as openai's, plus `route=` hints."""
        streaming = stream is True
        hints = RouteHints.coerce(dict(route) if isinstance(route, Mapping) else route)
        body: dict[str, Any] = {"messages": _jsonable(list(messages))}
        for key, value in params.items():
            if not isinstance(value, _NOT_SENT):
                body[key] = _jsonable(value)
        if extra_body:
            body.update(_jsonable(dict(extra_body)))
        path = self._router._path  # read once: a reload mid-call doesn't change this call's config
        call, tiers = path.start(
            model,
            body,
            stream=streaming,
            hints=hints,
            timeout_s=_timeout_seconds(timeout),
            extra_headers=extra_headers,
            extra_query=extra_query,
        )
        options = params.get("stream_options")
        wants_usage = streaming and isinstance(options, Mapping) and bool(options.get("include_usage"))
        return await path.serve(call, tiers, caller_wants_usage=wants_usage)


class AsyncChat:
    """`router.chat`."""

    def __init__(self, router: AsyncRouter) -> None:
        self.completions = AsyncCompletions(router)


class AsyncRouter:
    """Routes OpenAI-style chat completions across backends; use as `async with`."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        http_client: httpx2.AsyncClient | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self._owns_client = http_client is None
        self._client = http_client or httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
            timeout=httpx2.Timeout(None, connect=5.0),
        )
        self.stats = MemoryStats()
        self.cache = ResponseCache(config.cache) if config.cache is not None else None
        """The response cache (None unless `cache:` is configured); `cache.explain(...)` says how a
        request is keyed and whether it may be cached."""
        self.shared = self._shared_state(config)
        self.hooks = Hooks()
        self.ledger = UsageLedger(config.usage.path, flush_s=config.usage.flush_s)
        """Usage and cost totals (`router.usage()`), kept in `usage.path` too when configured."""
        exporters, self.metrics = _exporters(config)
        self.observers = Observers([self.hooks, self.ledger, *exporters])
        """Everything told of calls, attempts and circuits; `observers.add(obj)` adds your own `Observer`."""
        self._rng = random.Random(seed)
        self._circuits = Circuits(config.circuit)
        self._path = self._request_path(config)
        self._retired: list[ResponseCache | SharedState] = []
        self._background: anyio.abc.TaskGroup | None = None
        self._watch: tuple[Path, float, str | None] | None = None
        """(file, poll interval, hash of the content the config was loaded from)."""
        self._reloaded: anyio.Event | None = None
        self.reload_error: ConfigError | None = None
        """Why the last reload (or watched change) was refused; None after a good one."""
        self.chat = AsyncChat(self)

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
            self._client,
            self.stats,
            self._rng,
            cache=self.cache,
            shared=self.shared,
            observers=self.observers,
            circuits=self._circuits,
        )

    def on(self, event: EventKind, callback: Hook) -> Callable[[], None]:
        """Call `callback(event)` on each event of this kind (`attempt_start`, `attempt_end`, `success`,
        `failure`, `fallback`, `circuit_change`, `call_start`); returns a function that unregisters it.
        A callback that raises is logged and ignored; callbacks run on the event loop, so keep them quick."""
        return self.hooks.on(event, callback)

    def usage(
        self, *, group_by: tuple[str, ...] = ("backend", "model", "tag"), since_s: float | None = None
    ) -> list[UsageRow]:
        """This router's requests, attempts, tokens, cost, errors and cache hits, grouped (see README "Cost")."""
        return self.ledger.usage(group_by=group_by, since_s=since_s)

    async def reload(self, source: ConfigSource, *, env: Mapping[str, str] | None = None) -> RouterConfig:
        """Swap in a new configuration atomically: calls in flight finish on the old one, new calls use
        the new one, and stats and circuit state carry over for deployments that still exist.

        An invalid config raises `ConfigError` and leaves the old one in force. `usage` and `telemetry`
        settings are read once, when the router is made.
        """
        try:  # reading and checking a file is blocking work: off the event loop
            config = await anyio.to_thread.run_sync(_as_config, source, env)
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
        self._path, self.config, self.reload_error = path, config, None
        if self._reloaded is not None:
            self._reloaded.set()  # the load probes and shared-state sync follow the new table
        logger.info("reloaded the config: %d backends, %d models", len(config.backends), len(config.models))
        return config

    async def watch_config(
        self, path: str | os.PathLike[str], *, interval_s: float = 1.0, loaded: str | None = None
    ) -> None:
        """Reload whenever the file's content changes, until cancelled; a bad edit is logged and the old
        config kept (see `reload_error`). Polls a hash of the content, so it works on every filesystem,
        editors' atomic renames and Kubernetes ConfigMap symlink swaps included."""
        file = Path(path)
        seen = loaded or await anyio.to_thread.run_sync(_hash_of, file)  # what the config in force was read from
        if seen is None:
            raise FileNotFoundError(f"cannot watch {path}: it cannot be read")
        while True:
            await anyio.sleep(interval_s)
            current = await anyio.to_thread.run_sync(_hash_of, file)
            if current == seen or current is None:
                continue
            seen = current
            try:
                await self.reload(Path(path))
            except ConfigError as exc:
                logger.error("config change in %s not applied; keeping the previous config:\n%s", path, exc)

    async def run_background(self) -> None:
        """Poll self-hosted backends' load, sync shared state, write usage totals and watch the config
        file (when asked) until cancelled; `async with` starts it."""
        async with anyio.create_task_group() as tasks:
            if self.ledger.path is not None:
                tasks.start_soon(self.ledger.run)
            if self._watch is not None:
                file, interval_s, loaded = self._watch
                tasks.start_soon(partial(self.watch_config, file, interval_s=interval_s, loaded=loaded))
            while True:  # the config-bound work restarts after each reload
                self._reloaded = anyio.Event()
                async with anyio.create_task_group() as bound:
                    self._start_config_bound(bound)
                    await self._reloaded.wait()
                    bound.cancel_scope.cancel()

    def _start_config_bound(self, tasks: anyio.abc.TaskGroup) -> None:
        """The background work that follows the config: load probes and shared-state sync."""
        targets = self._path.table.probe_targets()
        if targets:
            probes = self.config.load_probes
            poller = LoadPoller(
                targets,
                self._client,
                self.stats.observe_server_load,
                interval_s=probes.interval_s,
                timeout_s=probes.timeout_s,
                max_backoff=2.0,  # a dead server is polled every 2 intervals: its return is news for its circuit
                on_answer_again=self._path.server_answers_again,
            )
            tasks.start_soon(poller.run)
        if self.shared is not None:
            ids = {d.candidate.id for route in self._path.table.routes.values() for d in route.deployments}
            tasks.start_soon(self.shared.run, self._path.circuits, ids, self.stats)

    @classmethod
    def from_config(
        cls,
        source: ConfigSource,
        *,
        env: Mapping[str, str] | None = None,
        http_client: httpx2.AsyncClient | None = None,
        seed: int | None = None,
        watch: bool | float = False,
    ) -> AsyncRouter:
        """Build from a YAML/TOML path or a mapping; `env` replaces `os.environ` for `${VAR}`.

        `watch=True` (or a poll interval in seconds) reloads the file whenever it changes while the
        router is open (`async with`)."""
        watched = _watched(source, watch)
        router = cls(_as_config(source, env), http_client=http_client, seed=seed)
        router._watch = watched
        return router

    @property
    def models(self) -> list[str]:
        """The aliases callers can ask for."""
        return list(self.config.models)

    async def explain(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        route: RouteHints | Mapping[str, Any] | None = None,
        stream: bool = False,
        **params: Any,
    ) -> RouteRecord:
        """How a call with these arguments would be routed, without sending it.

        Returns a route record whose `ranking` lists every tier's candidates in rank order with
        the policy's inputs (price, expected cost and TTFT, load, headroom) and whose `excluded`
        says why each other deployment was left out.
        """
        hints = RouteHints.coerce(dict(route) if isinstance(route, Mapping) else route)
        body: dict[str, Any] = {"messages": _jsonable(list(messages)), **_jsonable(params)}
        return self._path.explain(model, body, stream=stream, hints=hints)

    async def health(self) -> list[DeploymentHealth]:
        """Each deployment's circuit state, cooldown remaining, recent errors, stats and server load."""
        path = self._path
        return health_report(path.table, self.stats, path.circuits, anyio.current_time())

    async def probe_load(self) -> None:
        """Read every self-hosted backend's load once now (what the background poller does)."""
        poller = LoadPoller(
            self._path.table.probe_targets(),
            self._client,
            self.stats.observe_server_load,
            timeout_s=self.config.load_probes.timeout_s,
        )
        await poller.poll_once()

    def __repr__(self) -> str:
        return f"<AsyncRouter backends={list(self.config.backends)} models={self.models}>"

    async def aclose(self) -> None:
        """Stop background polling and close pooled connections (if the router created the client)."""
        await self._stop_background()
        await self.ledger.aclose()
        for retired in self._retired:
            await retired.aclose()
        self._retired.clear()
        if self.cache is not None:
            await self.cache.aclose()
        if self.shared is not None:
            await self.shared.sync(self._path.circuits, ())  # publish the last openings before leaving
            await self.shared.aclose()
        if self._owns_client:
            await self._client.aclose()

    async def _start_background(self) -> None:
        if self._background is None:
            self._background = anyio.create_task_group()
            await self._background.__aenter__()
            self._background.start_soon(self.run_background)

    async def _stop_background(self) -> None:
        if self._background is not None:
            background, self._background = self._background, None
            background.cancel_scope.cancel()
            await background.__aexit__(None, None, None)

    async def __aenter__(self) -> AsyncRouter:
        """Start the background work (load probes, shared state, usage file, config watch) for the router's lifetime."""
        await self._start_background()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --- the sync client: one event loop in one background thread, for the router's lifetime ----


class _LoopThread:
    """An anyio event loop in a daemon thread; sync calls hop onto it through a blocking portal."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._portal: BlockingPortal | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="inference-router", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        async def serve() -> None:
            async with BlockingPortal() as portal:
                self._portal = portal
                self._ready.set()
                await portal.sleep_until_stopped()

        try:
            anyio.run(serve)
        except BaseException as exc:  # pragma: no cover - surfaced to the constructor
            self._error = exc
            self._ready.set()

    def call(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine function on the loop and wait for its result."""
        if self._portal is None:
            raise RuntimeError("the router is closed")
        return self._portal.call(func)

    def start(self, func: Callable[[], Awaitable[object]]) -> Future[object]:
        """Run a coroutine function on the loop in the background; cancel the returned future to stop it."""
        if self._portal is None:
            raise RuntimeError("the router is closed")
        return self._portal.start_task_soon(func)

    def stop(self) -> None:
        """Stop the loop and join the thread."""
        portal, self._portal = self._portal, None
        if portal is not None:
            portal.call(portal.stop)
            self._thread.join(timeout=5)


class Stream:
    """A sync iterator of `ChatCompletionChunk` (what `Router` returns for `stream=True`)."""

    def __init__(self, stream: RouterStream, loop: _LoopThread) -> None:
        self._stream = stream
        self._loop = loop
        attach_route(self, stream.route)

    @property
    def route(self) -> RouteRecord:
        """The route record; complete once the stream has ended."""
        return self._stream.route

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        try:
            return self._loop.call(self._stream.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop reading and release the connection now."""
        self._loop.call(self._stream.close)

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Completions:
    """`router.chat.completions` for the sync client."""

    def __init__(self, router: Router) -> None:
        self._router = router

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: Literal[False] | None = ...,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self, *, model: str, messages: Iterable[ChatCompletionMessageParam], stream: Literal[True], **params: Any
    ) -> Stream: ...

    @overload
    def create(
        self, *, model: str, messages: Iterable[ChatCompletionMessageParam], stream: bool, **params: Any
    ) -> ChatCompletion | Stream: ...

    def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: bool | None = False,
        **params: Any,
    ) -> ChatCompletion | Stream:
        """Same arguments as `AsyncRouter.chat.completions.create`, blocking."""
        loop = self._router._loop
        create = self._router._async.chat.completions.create
        result = loop.call(partial(create, model=model, messages=list(messages), stream=stream, **params))
        return Stream(result, loop) if isinstance(result, RouterStream) else result


class Chat:
    """`router.chat` for the sync client."""

    def __init__(self, router: Router) -> None:
        self.completions = Completions(router)


class Router:
    """The blocking client: wraps one `AsyncRouter` running on a private event-loop thread."""

    def __init__(
        self, config: RouterConfig, *, seed: int | None = None, watch: tuple[Path, float, str | None] | None = None
    ) -> None:
        self._loop = _LoopThread()

        async def build() -> AsyncRouter:
            router = AsyncRouter(config, seed=seed)
            router._watch = watch
            return router

        self._async = self._loop.call(build)
        self._background = self._loop.start(self._async.run_background)
        self.chat = Chat(self)

    @classmethod
    def from_config(
        cls, source: ConfigSource, *, env: Mapping[str, str] | None = None, seed: int | None = None, watch: bool = False
    ) -> Router:
        """Build from a YAML/TOML path or a mapping; `env` replaces `os.environ` for `${VAR}`;
        `watch=True` reloads the file whenever it changes."""
        watched = _watched(source, watch)
        return cls(_as_config(source, env), seed=seed, watch=watched)

    @property
    def config(self) -> RouterConfig:
        """The configuration in force (it changes with `reload` and a watched file)."""
        return self._async.config

    @property
    def models(self) -> list[str]:
        """The aliases callers can ask for."""
        return self._async.models

    @property
    def stats(self) -> MemoryStats:
        """Live per-deployment stats."""
        return self._async.stats

    def health(self) -> list[DeploymentHealth]:
        """Each deployment's circuit state, cooldown remaining, recent errors, stats and server load."""
        return self._loop.call(self._async.health)

    def explain(self, *, model: str, messages: Iterable[ChatCompletionMessageParam], **params: Any) -> RouteRecord:
        """How a call would be routed, without sending it (see `AsyncRouter.explain`)."""
        return self._loop.call(partial(self._async.explain, model=model, messages=list(messages), **params))

    def reload(self, source: ConfigSource, *, env: Mapping[str, str] | None = None) -> RouterConfig:
        """Swap in a new configuration atomically (see `AsyncRouter.reload`)."""
        return self._loop.call(partial(self._async.reload, source, env=env))

    def on(self, event: EventKind, callback: Hook) -> Callable[[], None]:
        """Register a hook (see `AsyncRouter.on`); it runs on the router's event-loop thread."""
        return self._async.on(event, callback)

    def usage(
        self, *, group_by: tuple[str, ...] = ("backend", "model", "tag"), since_s: float | None = None
    ) -> list[UsageRow]:
        """Usage and cost totals (see `AsyncRouter.usage`)."""
        return self._async.usage(group_by=group_by, since_s=since_s)

    @property
    def metrics(self) -> Any:
        """The Prometheus metrics (`telemetry.prometheus: true`), else None."""
        return self._async.metrics

    def __repr__(self) -> str:
        return f"<Router backends={list(self.config.backends)} models={self.models}>"

    def close(self) -> None:
        """Close connections and stop the background loop."""
        if self._loop._portal is not None:
            self._background.cancel()
            self._loop.call(self._async.aclose)
            self._loop.stop()

    def __enter__(self) -> Router:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _watched(source: ConfigSource, watch: bool | float) -> tuple[Path, float, str | None] | None:
    """What `watch=` asks for: the file, its poll interval, and its content's hash — taken before the
    config is read, so an edit in between differs from it and is reloaded."""
    if watch is False:
        return None
    if isinstance(source, (Mapping, RouterConfig)):
        raise ValueError("watch= needs a config file path")
    return Path(source), 1.0 if watch is True else float(watch), _hash_of(Path(source))


def _hash_of(path: Path) -> str | None:
    """A hash of the file's content (None: unreadable, e.g. mid-replace); blocking, so the loop calls it in a thread."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
