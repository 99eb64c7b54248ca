"""`AsyncRouter` and `Router`: `openai.AsyncOpenAI` and `openai.OpenAI`, routed.

Change one line — the client construction — and every call keeps its arguments, return types
and exception classes while it is routed across the configured backends. `chat.completions.create`
and `parse` and `embeddings.create` go straight into the request path (the fast path; `parse`
then uses openai's own parser); every other method (`stream`, `with_raw_response`,
`with_streaming_response`, `completions`, `responses`, `models`) is openai's own code over the
routing transport (`router/transport.py`), which hands the request to the same path. Either way
there is one path: `router/path/pipeline.py`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from functools import cached_property, partial
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast, overload

import anyio
import httpx2
import openai
from anyio.from_thread import BlockingPortal
from openai import omit
from openai._models import construct_type
from openai.lib._parsing import parse_chat_completion, type_to_response_format_param, validate_input_tools
from openai.resources import AsyncEmbeddings, Embeddings
from openai.resources.chat import AsyncChat, AsyncCompletions, Chat, Completions
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam, ParsedChatCompletion
from pydantic import ValidationError

from providers import Answered
from router.config import RouterConfig
from router.engine import NOT_SENT, ConfigSource, RouterEngine, as_config, jsonable, timeout_seconds, watched
from router.observe.usage import UsageLedger, UsageRow
from router.path.events import EventKind, Hook, Hooks, Observers
from router.path.health import DeploymentHealth
from router.path.hints import RouteHints
from router.path.pipeline import RequestPath
from router.path.record import ROUTE_EXTENSION, RouteRecord, attach_route, route_of
from router.path.stats import MemoryStats
from router.path.streaming import RouterStream
from router.transport import ERROR_EXTENSION, RoutingTransport, SyncRoutingTransport

T = TypeVar("T")
PLACEHOLDER_API_KEY = "inference-router"
"""The `api_key` an openai client must have; the router's is never sent anywhere (backends have their own)."""
BASE_URL = "http://inference-router.invalid/v1"
"""The `base_url` frameworks read; nothing is sent there (the routing transport answers every request)."""
_OWN_HEADERS = "x-stainless-"
"""openai's raw/streaming-response and helper calls mark `create` with these: they take openai's own path."""


def _through_openai(extra_headers: Mapping[str, str] | None) -> bool:
    """Whether this `create` came from openai's own machinery (`with_raw_response`, `.stream()`, …)."""
    return bool(extra_headers) and any(k.lower().startswith(_OWN_HEADERS) for k in extra_headers or ())


def _hints_and_body(
    route: RouteHints | Mapping[str, Any] | None, extra_body: Mapping[str, Any] | None
) -> tuple[RouteHints, dict[str, Any]]:
    """The call's hints (`route=`, or `extra_body={"route": …}` from a framework) and the rest of `extra_body`."""
    extra = dict(extra_body) if extra_body else {}
    from_body = extra.pop("route", None)
    chosen = route if route is not None else from_body
    return RouteHints.coerce(dict(chosen) if isinstance(chosen, Mapping) else chosen), extra


def _request_body(first: dict[str, Any], params: Mapping[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A fast-path request body: the call's main field, its other given arguments, then `extra_body`."""
    body = {name: jsonable(value) for name, value in first.items()}
    for key, value in params.items():
        if not isinstance(value, NOT_SENT):
            body[key] = jsonable(value)
    if extra:
        body.update(jsonable(extra))
    return body


def _wants_usage(stream: bool, params: Mapping[str, Any]) -> bool:
    options = params.get("stream_options")
    return stream and isinstance(options, Mapping) and bool(options.get("include_usage"))


def _route_argument(
    route: RouteHints | Mapping[str, Any] | None, extra_body: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """`route=` folded into `extra_body`, for a call that goes through openai's own code."""
    if route is None:
        return dict(extra_body) if extra_body else None
    hints = route.model_dump(exclude_defaults=True) if isinstance(route, RouteHints) else dict(route)
    return {**(extra_body or {}), "route": hints}


def _with_route(result: T, response: httpx2.Response) -> T:
    """What openai parsed from a routed response, with the route record on it (`route_of`)."""
    record = response.extensions.get(ROUTE_EXTENSION)
    if isinstance(record, RouteRecord) and not isinstance(result, httpx2.Response):
        with contextlib.suppress(AttributeError, TypeError):  # no __dict__: the raw response still has it
            attach_route(result, record)
    return result


class RoutedAsyncCompletions(AsyncCompletions):
    """`router.chat.completions`: openai's resource, with `create` taking the fast path into the router."""

    _client: AsyncRouter

    @overload  # type: ignore[override]
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
        """Route one chat completion; openai's arguments, plus `route=` hints (or `extra_body={"route": …}`)."""
        if _through_openai(extra_headers):
            raw: Any = await super().create(
                model=model,
                messages=messages,
                stream=stream,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=_route_argument(route, extra_body),
                timeout=timeout if timeout is not None else openai.NOT_GIVEN,
                **params,
            )
            return cast(ChatCompletion, raw)  # or an AsyncStream / raw response of openai's own making
        streaming = stream is True
        hints, extra = _hints_and_body(route, extra_body)
        result = await self._client._engine.route(
            "chat",
            model,
            _request_body({"messages": list(messages)}, params, extra),
            stream=streaming,
            hints=hints,
            timeout_s=timeout_seconds(timeout),
            extra_headers=extra_headers,
            extra_query=extra_query,
            caller_wants_usage=_wants_usage(streaming, params),
        )
        assert isinstance(result, (ChatCompletion, RouterStream))
        return result

    async def parse(  # type: ignore[override]
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        response_format: Any = omit,
        tools: Any = omit,
        route: RouteHints | Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Any = None,
        **params: Any,
    ) -> ParsedChatCompletion[Any]:
        """openai's `parse` on the fast path: the request is routed as `create` routes it, then openai's
        own parser reads the answer into `response_format` (and strict tools' arguments into theirs)."""
        if _through_openai(extra_headers):
            raw: Any = await super().parse(
                model=model,
                messages=messages,
                response_format=response_format,
                tools=tools,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=_route_argument(route, extra_body),
                timeout=timeout if timeout is not None else openai.NOT_GIVEN,
                **params,
            )
            return cast(ParsedChatCompletion[Any], raw)  # a raw response of openai's own making
        input_tools = validate_input_tools(tools)
        if response_format is not omit:
            params["response_format"] = type_to_response_format_param(response_format)
        if input_tools is not omit:
            params["tools"] = input_tools
        completion = await self.create(
            model=model,
            messages=messages,
            stream=False,
            route=route,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
            timeout=timeout,
            **params,
        )
        parsed = parse_chat_completion(
            response_format=response_format, chat_completion=completion, input_tools=input_tools
        )
        attach_route(parsed, route_of(completion))
        return parsed


def _embeddings_of(answered: Answered) -> CreateEmbeddingResponse:
    """A routed embeddings answer as openai's type (leniently, as openai builds it), with its route."""
    try:
        result = CreateEmbeddingResponse.model_validate_json(answered.content)
    except ValidationError:
        result = cast(CreateEmbeddingResponse, construct_type(type_=CreateEmbeddingResponse, value=answered.data))
    attach_route(result, route_of(answered))
    return result


class RoutedAsyncEmbeddings(AsyncEmbeddings):
    """`router.embeddings`: openai's resource, with `create` taking the fast path into the router."""

    _client: AsyncRouter

    async def create(  # type: ignore[override]
        self,
        *,
        input: Any,
        model: str,
        route: RouteHints | Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Any = None,
        **params: Any,
    ) -> CreateEmbeddingResponse:
        """Route one embeddings request; openai's arguments, plus `route=` hints."""
        if _through_openai(extra_headers):
            raw: Any = await super().create(
                input=input,
                model=model,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=_route_argument(route, extra_body),
                timeout=timeout if timeout is not None else openai.NOT_GIVEN,
                **params,
            )
            return cast(CreateEmbeddingResponse, raw)
        hints, extra = _hints_and_body(route, extra_body)
        body = _request_body({"input": input}, params, extra)
        answered = await self._client._engine.route(
            "embeddings",
            model,
            body,
            stream=False,
            hints=hints,
            timeout_s=timeout_seconds(timeout),
            extra_headers=extra_headers,
            extra_query=extra_query,
        )
        assert isinstance(answered, Answered)
        return _embeddings_of(answered)


class RoutedAsyncChat(AsyncChat):
    """`router.chat`."""

    @cached_property
    def completions(self) -> RoutedAsyncCompletions:
        return RoutedAsyncCompletions(self._client)


class AsyncRouter(openai.AsyncOpenAI):
    """An `openai.AsyncOpenAI` that routes every call across the configured backends; use as `async with`.

    `AsyncRouter()` reads the config file named by `INFERENCE_ROUTER_CONFIG`; `AsyncRouter(path_or_mapping)`
    or `AsyncRouter.from_config(...)` take one. openai's own options (`timeout`, `default_headers`, …) are
    accepted as openai takes them; `api_key` and `base_url` are placeholders (each backend has its own),
    and openai's retries are off (the router retries, once, in its path).
    """

    def __init__(
        self,
        config: ConfigSource | None = None,
        *,
        env: Mapping[str, str] | None = None,
        seed: int | None = None,
        watch: bool | float = False,
        backend_client: httpx2.AsyncClient | None = None,
        http_client: httpx2.AsyncClient | None = None,
        _engine: RouterEngine | None = None,
        **openai_options: Any,
    ) -> None:
        if _engine is None:
            file = watched(config, watch)  # hashed before reading: an edit in between is reloaded
            _engine = RouterEngine(as_config(config, env), backend_client=backend_client, seed=seed, watch=file)
        self._engine = _engine
        for name in ("api_key", "base_url", "max_retries", "_enforce_credentials"):
            openai_options.pop(name, None)
        super().__init__(
            api_key=PLACEHOLDER_API_KEY,
            base_url=BASE_URL,
            max_retries=0,
            http_client=http_client or httpx2.AsyncClient(transport=RoutingTransport(_engine), timeout=None),
            **openai_options,
        )

    @classmethod
    def from_config(
        cls,
        source: ConfigSource,
        *,
        env: Mapping[str, str] | None = None,
        backend_client: httpx2.AsyncClient | None = None,
        seed: int | None = None,
        watch: bool | float = False,
    ) -> Self:
        """Build from a YAML/TOML path or a mapping; `env` replaces `os.environ` for `${VAR}`.

        `watch=True` (or a poll interval in seconds) reloads the file whenever it changes while the
        router is open (`async with`)."""
        return cls(source, env=env, backend_client=backend_client, seed=seed, watch=watch)

    def copy(self, **options: Any) -> Self:
        """openai's `copy` / `with_options`: a client with other options over the same router (same
        stats, circuits, cache and config)."""
        extra = {**(options.pop("_extra_kwargs", None) or {}), "_engine": self._engine}
        return super().copy(**options, _extra_kwargs=extra)

    with_options = copy

    @cached_property
    def chat(self) -> RoutedAsyncChat:
        return RoutedAsyncChat(self)

    @cached_property
    def embeddings(self) -> RoutedAsyncEmbeddings:
        return RoutedAsyncEmbeddings(self)

    # --- what openai's machinery needs to keep the router's types --------------------------

    async def _process_response(self, *, response: httpx2.Response, **kwargs: Any) -> Any:
        return _with_route(await super()._process_response(response=response, **kwargs), response)

    def _make_status_error(self, err_msg: str, *, body: object, response: httpx2.Response) -> openai.APIStatusError:
        error = response.extensions.get(ERROR_EXTENSION)
        if isinstance(error, openai.APIError):
            return error  # type: ignore[return-value]  # the router's own exception, raised as is
        return super()._make_status_error(err_msg, body=body, response=response)

    # --- the router --------------------------------------------------------------------------

    @property
    def engine(self) -> RouterEngine:
        """The router's state, shared by this client and its copies."""
        return self._engine

    @property
    def config(self) -> RouterConfig:
        """The configuration in force (it changes with `reload` and a watched file)."""
        return self._engine.config

    @property
    def aliases(self) -> list[str]:
        """The model aliases callers can ask for (`models.list()` lists them, then deployments' model ids)."""
        return list(self._engine.config.models)

    @property
    def stats(self) -> MemoryStats:
        """Live per-deployment stats."""
        return self._engine.stats

    @property
    def cache(self) -> Any:
        """The response cache (None unless `cache:` is configured); `cache.explain(...)` says how a
        request is keyed and whether it may be cached."""
        return self._engine.cache

    @property
    def shared(self) -> Any:
        """The shared state (Redis) when `state: {backend: redis}`, else None."""
        return self._engine.shared

    @property
    def hooks(self) -> Hooks:
        return self._engine.hooks

    @property
    def ledger(self) -> UsageLedger:
        """Usage and cost totals (`router.usage()`), kept in `usage.path` too when configured."""
        return self._engine.ledger

    @property
    def observers(self) -> Observers:
        """Everything told of calls, attempts and circuits; `observers.add(obj)` adds your own `Observer`."""
        return self._engine.observers

    @property
    def metrics(self) -> Any:
        """The Prometheus metrics (`telemetry.prometheus: true`), else None."""
        return self._engine.metrics

    @property
    def reload_error(self) -> Any:
        """Why the last reload (or watched change) was refused; None after a good one."""
        return self._engine.reload_error

    @property
    def _path(self) -> RequestPath:
        return self._engine.path

    def on(self, event: EventKind, callback: Hook) -> Callable[[], None]:
        """Call `callback(event)` on each event of this kind (`attempt_start`, `attempt_end`, `success`,
        `failure`, `fallback`, `circuit_change`, `call_start`); returns a function that unregisters it.
        A callback that raises is logged and ignored; callbacks run on the event loop, so keep them quick."""
        return self._engine.on(event, callback)

    def usage(
        self, *, group_by: tuple[str, ...] = ("backend", "model", "tag"), since_s: float | None = None
    ) -> list[UsageRow]:
        """This router's requests, attempts, tokens, cost, errors and cache hits, grouped (see README "Cost")."""
        return self._engine.usage(group_by=group_by, since_s=since_s)

    async def reload(self, source: ConfigSource, *, env: Mapping[str, str] | None = None) -> RouterConfig:
        """Swap in a new configuration atomically: calls in flight finish on the old one, new calls use
        the new one, and stats and circuit state carry over for deployments that still exist.

        An invalid config raises `ConfigError` and leaves the old one in force. `usage` and `telemetry`
        settings are read once, when the router is made.
        """
        return await self._engine.reload(source, env=env)

    async def watch_config(self, path: str | Any, *, interval_s: float = 1.0, loaded: str | None = None) -> None:
        """Reload whenever the file's content changes, until cancelled; a bad edit is logged and the old
        config kept (see `reload_error`). Polls a hash of the content, so it works on every filesystem,
        editors' atomic renames and Kubernetes ConfigMap symlink swaps included."""
        await self._engine.watch_config(path, interval_s=interval_s, loaded=loaded)

    async def run_background(self) -> None:
        """Poll self-hosted backends' load, sync shared state, write usage totals and watch the config
        file (when asked) until cancelled; `async with` starts it."""
        await self._engine.run_background()

    async def explain(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam] = (),
        route: RouteHints | Mapping[str, Any] | None = None,
        stream: bool = False,
        endpoint: str = "chat",
        **params: Any,
    ) -> RouteRecord:
        """How a call with these arguments would be routed, without sending it (`endpoint=`
        `"embeddings"`, `"completions"` or `"responses"` for the other endpoints, with their fields).

        Returns a route record whose `ranking` lists every tier's candidates in rank order with
        the policy's inputs (price, expected cost and TTFT, load, headroom) and whose `excluded`
        says why each other deployment was left out.
        """
        hints = RouteHints.coerce(dict(route) if isinstance(route, Mapping) else route)
        body: dict[str, Any] = (
            {"messages": jsonable(list(messages)), **jsonable(params)} if messages else jsonable(params)
        )
        return self._engine.explain(model, body, stream=stream, hints=hints, endpoint=endpoint)

    async def health(self) -> list[DeploymentHealth]:
        """Each deployment's circuit state, cooldown remaining, recent errors, stats and server load."""
        return self._engine.health()

    async def probe_load(self) -> None:
        """Read every self-hosted backend's load once now (what the background poller does)."""
        await self._engine.probe_load()

    def __repr__(self) -> str:
        return f"<AsyncRouter backends={list(self.config.backends)} models={self.aliases}>"

    async def close(self) -> None:
        """Stop background work and close connections, stores and files (the router's, shared by its copies)."""
        await super().close()
        await self._engine.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        """Start the background work (load probes, shared state, usage file, config watch) for the router's lifetime."""
        await self._engine.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


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


_END = object()
"""Put on a sync stream's queue after its last chunk."""


class Stream(openai.Stream[ChatCompletionChunk]):
    """A sync iterator of `ChatCompletionChunk` (what `Router` returns for `stream=True`): an `openai.Stream`.

    A task on the router's loop reads the stream and hands each chunk over through a queue, so the
    reading thread waits on the queue alone: no hop onto the loop per chunk, whatever the thread count.
    """

    def __init__(self, stream: RouterStream, loop: _LoopThread) -> None:
        self._stream = stream
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done = False
        attach_route(self, stream.route)
        self._pump = loop.start(self._read_all)

    async def _read_all(self) -> None:
        """On the loop: every chunk onto the queue, then the end (or the error that ended it)."""
        try:
            async for chunk in self._stream:
                self._queue.put(chunk)
        except BaseException as error:  # the caller's thread raises it, in order
            self._queue.put(_Raised(error))
            raise
        finally:
            self._queue.put(_END)

    @property
    def route(self) -> RouteRecord:
        """The route record; complete once the stream has ended."""
        return self._stream.route

    @property
    def response(self) -> httpx2.Response:  # type: ignore[override]
        """A stand-in for the HTTP response, with the route headers."""
        return self._stream.response

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.error
        return cast(ChatCompletionChunk, item)

    def close(self) -> None:
        """Stop reading and release the connection now."""
        self._done = True
        if not self._pump.done():
            self._pump.cancel()
        if self._loop._portal is not None:
            self._loop.call(self._stream.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Raised:
    """An exception that ended a sync stream, passed to the reading thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class RoutedCompletions(Completions):
    """`router.chat.completions` for the sync client: `create` hops onto the router's loop thread."""

    _client: Router

    @overload  # type: ignore[override]
    def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: Literal[False] | None = ...,
        route: RouteHints | Mapping[str, Any] | None = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: Literal[True],
        route: RouteHints | Mapping[str, Any] | None = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> Stream: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: bool,
        route: RouteHints | Mapping[str, Any] | None = ...,
        extra_headers: Mapping[str, str] | None = ...,
        extra_body: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> ChatCompletion | Stream: ...

    def create(
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        stream: bool | None = False,
        route: RouteHints | Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatCompletion | Stream:
        """Same arguments as `AsyncRouter.chat.completions.create`, blocking."""
        if _through_openai(extra_headers):
            raw_sync: Any = super().create(
                model=model,
                messages=messages,
                stream=stream,
                extra_headers=extra_headers,
                extra_body=_route_argument(route, extra_body),
                **params,
            )
            return cast(ChatCompletion, raw_sync)  # or a Stream / raw response of openai's own making
        router = self._client
        create = router._async.chat.completions.create
        call = partial(
            create,
            model=model,
            messages=list(messages),
            stream=stream,
            route=route,
            extra_headers=extra_headers,
            extra_body=extra_body,
            **params,
        )
        result = router._loop.call(call)
        return Stream(result, router._loop) if isinstance(result, RouterStream) else result

    def parse(  # type: ignore[override]
        self,
        *,
        model: str,
        messages: Iterable[ChatCompletionMessageParam],
        extra_headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> ParsedChatCompletion[Any]:
        """Same arguments as `AsyncRouter.chat.completions.parse`, blocking."""
        if _through_openai(extra_headers):
            extra_body = _route_argument(params.pop("route", None), params.pop("extra_body", None))
            raw: Any = super().parse(
                model=model, messages=messages, extra_headers=extra_headers, extra_body=extra_body, **params
            )
            return cast(ParsedChatCompletion[Any], raw)
        router = self._client
        parse = router._async.chat.completions.parse
        call = partial(parse, model=model, messages=list(messages), extra_headers=extra_headers, **params)
        return router._loop.call(call)


class RoutedEmbeddings(Embeddings):
    """`router.embeddings` for the sync client: `create` hops onto the router's loop thread."""

    _client: Router

    def create(  # type: ignore[override]
        self, *, input: Any, model: str, extra_headers: Mapping[str, str] | None = None, **params: Any
    ) -> CreateEmbeddingResponse:
        """Same arguments as `AsyncRouter.embeddings.create`, blocking."""
        if _through_openai(extra_headers):
            extra_body = _route_argument(params.pop("route", None), params.pop("extra_body", None))
            raw: Any = super().create(
                input=input, model=model, extra_headers=extra_headers, extra_body=extra_body, **params
            )
            return cast(CreateEmbeddingResponse, raw)
        router = self._client
        call = partial(router._async.embeddings.create, input=input, model=model, extra_headers=extra_headers, **params)
        return router._loop.call(call)


class RoutedChat(Chat):
    """`router.chat` for the sync client."""

    @cached_property
    def completions(self) -> RoutedCompletions:
        return RoutedCompletions(self._client)


class Router(openai.OpenAI):
    """An `openai.OpenAI` that routes every call: wraps one `AsyncRouter` running on a private
    event-loop thread (one loop for the router's lifetime, not one per call)."""

    def __init__(
        self,
        config: ConfigSource | None = None,
        *,
        env: Mapping[str, str] | None = None,
        seed: int | None = None,
        watch: bool | float = False,
        http_client: httpx2.Client | None = None,
        _shared: tuple[_LoopThread, AsyncRouter] | None = None,
        **openai_options: Any,
    ) -> None:
        if _shared is None:
            file = watched(config, watch)
            resolved = as_config(config, env)
            loop = _LoopThread()

            async def build() -> AsyncRouter:
                return AsyncRouter(_engine=RouterEngine(resolved, seed=seed, watch=file))

            async_router = loop.call(build)
            self._background: Future[object] | None = loop.start(async_router.run_background)
            _shared = (loop, async_router)
        else:
            self._background = None
        self._loop, self._async = _shared
        for name in ("api_key", "base_url", "max_retries", "_enforce_credentials"):
            openai_options.pop(name, None)
        super().__init__(
            api_key=PLACEHOLDER_API_KEY,
            base_url=BASE_URL,
            max_retries=0,
            http_client=http_client
            or httpx2.Client(transport=SyncRoutingTransport(self._async.engine, self._loop.call), timeout=None),
            **openai_options,
        )

    @classmethod
    def from_config(
        cls,
        source: ConfigSource,
        *,
        env: Mapping[str, str] | None = None,
        seed: int | None = None,
        watch: bool | float = False,
    ) -> Self:
        """Build from a YAML/TOML path or a mapping; `env` replaces `os.environ` for `${VAR}`;
        `watch=True` reloads the file whenever it changes."""
        return cls(source, env=env, seed=seed, watch=watch)

    def copy(self, **options: Any) -> Self:
        """openai's `copy` / `with_options`, over the same router."""
        extra = {**(options.pop("_extra_kwargs", None) or {}), "_shared": (self._loop, self._async)}
        return super().copy(**options, _extra_kwargs=extra)

    with_options = copy

    @cached_property
    def chat(self) -> RoutedChat:
        return RoutedChat(self)

    @cached_property
    def embeddings(self) -> RoutedEmbeddings:
        return RoutedEmbeddings(self)

    def _process_response(self, *, response: httpx2.Response, **kwargs: Any) -> Any:
        return _with_route(super()._process_response(response=response, **kwargs), response)

    def _make_status_error(self, err_msg: str, *, body: object, response: httpx2.Response) -> openai.APIStatusError:
        error = response.extensions.get(ERROR_EXTENSION)
        if isinstance(error, openai.APIError):
            return error  # type: ignore[return-value]
        return super()._make_status_error(err_msg, body=body, response=response)

    @property
    def engine(self) -> RouterEngine:
        """The router's state, shared by this client and its copies."""
        return self._async.engine

    @property
    def config(self) -> RouterConfig:
        """The configuration in force (it changes with `reload` and a watched file)."""
        return self._async.config

    @property
    def aliases(self) -> list[str]:
        """The model aliases callers can ask for."""
        return self._async.aliases

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
        return f"<Router backends={list(self.config.backends)} models={self.aliases}>"

    def close(self) -> None:
        """Close connections and stop the background loop (the router's, shared by its copies)."""
        super().close()
        if self._loop._portal is not None:
            if self._background is not None:
                self._background.cancel()
            self._loop.call(self._async.close)
            self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
