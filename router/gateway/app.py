"""The gateway's ASGI app: OpenAI's wire over one router engine per worker process.

`/v1/*` goes through the transport's `serve_wire` — the very function under `AsyncRouter` — with
the caller's key checked and its tags added on the way in (`KeyRing.admit`) and its tokens and cost
counted on the way out (`KeyRing.charge`). Also: `/healthz`, `/readyz`, `/metrics`, and `/admin/*`
behind the admin key. A client that disconnects cancels its call at once (its upstream request is
dropped); bodies over `gateway.max_body_bytes` get 413, bodies slower than `body_timeout_s` 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
import httpx2
import openai

from router.config import ConfigError, GatewayConfig, RouterConfig, load_config
from router.engine import RouterEngine, watched
from router.errors import status_error, unknown_model
from router.gateway.keys import Caller, KeyRing
from router.gateway.meter import MemoryMeter, Meter, RedisMeter
from router.gateway.tracing import ServerSpans
from router.observe.metrics import process_ended
from router.path.hints import RouteHints
from router.path.record import ROUTE_EXTENSION, RouteRecord
from router.transport import Admit, SSEBody, WireRequest, error_response, json_response, serve_wire

logger = logging.getLogger("router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONFIG_ENV = "INFERENCE_ROUTER_GATEWAY_CONFIG"
"""The config file each worker process reads (set by `inference-router serve`)."""
_NOT_FORWARDED = frozenset(
    {"cookie", "forwarded", "via", "x-real-ip", "traceparent", "tracestate", "baggage", "expect", "te", "origin"}
)
"""Headers a client or a proxy in front adds that a backend must never get (the SDK's own list applies too)."""


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class Gateway:
    """The ASGI app: built per worker process, its engine made at lifespan startup and closed at shutdown."""

    def __init__(
        self, config_path: str | os.PathLike[str], *, tracer_provider: Any = None, own_process: bool = False
    ) -> None:
        self.config_path = Path(config_path)
        self._own_process = own_process
        """A worker process of its own (uvicorn's): process-wide tuning is ours to do."""
        self._tracer_provider = tracer_provider
        self._spans: ServerSpans | None = None
        self.engine: RouterEngine | None = None
        self.keys: KeyRing | None = None
        self._config: RouterConfig | None = None
        self._meter: Meter | None = None
        self._in_flight = 0
        """API requests this worker is serving now (`gateway.max_connections` bounds it)."""

    # --- lifetime ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Read the config, make the engine and start its background work (load probes, shared state,
        usage file, file watch); SIGHUP reloads the config."""
        watch = watched(self.config_path, True)  # hashed before reading: an edit in between is reloaded
        config = await anyio.to_thread.run_sync(load_config, self.config_path)
        if not config.gateway.watch:
            watch = None
        if not config.telemetry.prometheus and importlib.util.find_spec("prometheus_client") is not None:
            config = config.model_copy(update={"telemetry": config.telemetry.model_copy(update={"prometheus": True})})
        self.engine = RouterEngine(config, watch=watch)
        state = config.state
        self._meter = (
            RedisMeter(state.url or "redis://127.0.0.1:6379/0", namespace=state.namespace)
            if state.backend == "redis"
            else MemoryMeter()
        )
        self._keys_for(config)
        if config.telemetry.otel != "off" and importlib.util.find_spec("opentelemetry") is not None:
            self._spans = ServerSpans(self._tracer_provider)
        await self.engine.start()
        if self._own_process:
            _settle_gc()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread: no signals
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_soon)

    async def shutdown(self) -> None:
        """Close the engine (background work, connections, usage file) and the meter."""
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self.engine is not None:
            await self.engine.aclose()
        if self._meter is not None:
            await self._meter.aclose()
        if self._own_process:
            process_ended(os.getpid())  # its live gauges leave the other workers' /metrics

    def _reload_soon(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> dict[str, Any]:
        """Reload the config file (SIGHUP, `POST /admin/reload`); a bad file keeps the config in force."""
        assert self.engine is not None
        try:
            config = await self.engine.reload(self.config_path)
        except ConfigError as exc:
            logger.error("reload of %s refused; keeping the previous config:\n%s", self.config_path, exc)
            return {"reloaded": False, "errors": [str(issue) for issue in exc.issues]}
        return {"reloaded": True, "backends": len(config.backends), "models": len(config.models)}

    def _keys_for(self, config: RouterConfig) -> KeyRing:
        """The key ring of the config in force (rebuilt after a reload changed the `gateway` section)."""
        if config is not self._config:
            if self.keys is None or self._config is None or self._config.gateway != config.gateway:
                assert self._meter is not None
                self.keys = KeyRing(config.gateway, self._meter)
            self._config = config
        assert self.keys is not None
        return self.keys

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        if engine is None:
            await _send(send, json_response(503, {"error": {"message": "starting", "type": "server_error"}}))
            return
        path: str = scope["path"]
        try:
            if path.startswith("/v1/"):
                limit = engine.config.gateway.max_connections
                if limit is not None and self._in_flight >= limit:
                    await _send(send, json_response(503, {"error": _busy(limit)}, headers={"retry-after": "1"}))
                    return
                self._in_flight += 1
                try:
                    await self._api(engine, scope, receive, send, path[4:])
                finally:
                    self._in_flight -= 1
            elif path == "/healthz":
                await _send(send, json_response(200, {"status": "ok"}))
            elif path == "/readyz":
                await _send(send, self._ready(engine))
            elif path == "/metrics":
                await _send(send, _metrics(engine))
            elif path.startswith("/admin/"):
                await self._admin(engine, scope, receive, send, path.removeprefix("/admin/"))
            else:
                await _send(send, json_response(404, {"error": _not_found(path)}))
        except ClientGone:
            return

    # --- the OpenAI API ---------------------------------------------------------------------

    async def _api(self, engine: RouterEngine, scope: Scope, receive: Receive, send: Send, api: str) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        keys = self._keys_for(engine.config)
        settings = engine.config.gateway
        try:
            caller = keys.identify(headers.get("authorization"))
            content = await _read_body(receive, headers, settings)
        except openai.APIError as error:
            await _send(send, error_response(error))
            return
        wire = WireRequest(
            scope["method"],
            api,
            {k: v for k, v in headers.items() if k not in _NOT_FORWARDED and not k.startswith("x-forwarded-")},
            content,
            dict(parse_qsl(scope["query_string"].decode("latin-1"))),
        )
        admit = None if caller is None else partial(_admit, keys, caller)
        if self._spans is None:
            await self._serve(engine, send, receive, wire, keys, caller, admit)
            return
        with self._spans.span(headers, wire.method, "/v1/" + api) as span:
            status = await self._serve(engine, send, receive, wire, keys, caller, admit)
            span.set_attribute("http.response.status_code", status)

    async def _serve(
        self,
        engine: RouterEngine,
        send: Send,
        receive: Receive,
        wire: WireRequest,
        keys: KeyRing,
        caller: Caller | None,
        admit: Admit | None,
    ) -> int:
        """Route the request and send the answer; a client that leaves cancels it. Returns the status sent."""
        api = wire.path
        status = 499  # what nginx logs for a client that left before its answer
        with anyio.CancelScope() as cancel:
            watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, cancel))
            try:
                try:
                    response = await serve_wire(engine, wire, admit=admit)
                except Exception:  # a bug, not a routing failure: logged (redacted), answered in OpenAI's shape
                    logger.exception("gateway: %s /v1/%s failed", wire.method, api)
                    response = json_response(500, {"error": _internal()})
                if caller is not None and caller.key.models is not None and api.startswith("models"):
                    response = _visible_models(response, caller, api)
                await self._respond(send, response, keys, caller)
                status = response.status_code
            finally:
                watcher.cancel()
        return status

    async def _respond(self, send: Send, response: httpx2.Response, keys: KeyRing, caller: Caller | None) -> None:
        """Send a routed answer; a stream event by event. The key is charged before the last byte goes."""
        body = response.stream
        if not isinstance(body, SSEBody):
            await _charge(keys, caller, response.extensions.get(ROUTE_EXTENSION))
            await _send(send, response)
            return
        events = body.events(over_http=True)
        try:
            await send({"type": "http.response.start", "status": response.status_code, "headers": _raw(response)})
            await _send_coalesced(send, events)
            await _charge(keys, caller, body.stream.route)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):  # a disconnect cancelled us: still free the upstream
                await events.aclose()
                await body.aclose()

    # --- operations -------------------------------------------------------------------------

    def _ready(self, engine: RouterEngine) -> httpx2.Response:
        """Ready: the config is loaded and at least one deployment's circuit is not open."""
        health = engine.health()
        usable = [h.deployment for h in health if h.state != "open"]
        ready = bool(usable) and not engine.closed
        payload = {
            "ready": ready,
            "deployments": len(health),
            "usable": len(usable),
            "open": [h.deployment for h in health if h.state == "open"],
            "reload_error": str(engine.reload_error) if engine.reload_error else None,
        }
        return json_response(200 if ready else 503, payload)

    async def _admin(self, engine: RouterEngine, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        """`GET /admin/health`, `GET /admin/usage?by=key,backend&since_s=3600`, `POST /admin/reload`."""
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not self._keys_for(engine.config).is_admin(auth):
            await _send(send, json_response(403, {"error": _forbidden()}))
            return
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        if what == "health":
            await _send(send, json_response(200, [h.to_dict() for h in engine.health()]))
        elif what == "usage":
            by = tuple(part for part in query.get("by", "key,backend,model").split(",") if part)
            try:
                since = float(query["since_s"]) if "since_s" in query else None
                rows = engine.usage(group_by=by, since_s=since)
            except ValueError as exc:
                await _send(send, json_response(400, {"error": {"message": str(exc), "type": "invalid_request_error"}}))
                return
            await _send(send, json_response(200, {"rows": [row.to_dict() for row in rows]}))
        elif what == "reload" and scope["method"] == "POST":
            await _send(send, json_response(200, await self.reload()))
        else:
            await _send(send, json_response(404, {"error": _not_found("/admin/" + what)}))


def create_app() -> Gateway:
    """The app uvicorn loads in each worker (`router.gateway.app:create_app`, a factory)."""
    return Gateway(os.environ[CONFIG_ENV], own_process=True)


def _settle_gc() -> None:
    """After startup: move everything alive (modules, config, route table) out of the collector's way and
    collect less often — a server's garbage is short-lived and freed by reference counting; in an A/B
    run this saved 5–7 % of CPU per request."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


async def _admit(keys: KeyRing, caller: Caller, endpoint: str, model: str, hints: RouteHints) -> RouteHints:
    return await keys.admit(caller, model, hints)


async def _charge(keys: KeyRing, caller: Caller | None, record: Any) -> None:
    if caller is not None and isinstance(record, RouteRecord):
        await keys.charge(caller, record)


async def _read_body(receive: Receive, headers: dict[str, str], settings: GatewayConfig) -> bytes:
    """The request body: 413 past `max_body_bytes` (at once when Content-Length says so), 408 when it
    takes longer than `body_timeout_s` to arrive."""
    limit = settings.max_body_bytes
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        why = f"the request body did not arrive within {settings.body_timeout_s:g} s"
        raise status_error(openai.APIStatusError, why, 408, body=_body(why, "timeout")) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel the call when the client goes away (uvicorn says so the moment the connection drops)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


_HIGH_WATER = 256 * 1024
"""Bytes of a stream queued for a slow client before the stream waits for it."""


async def _send_coalesced(send: Send, events: AsyncIterator[bytes]) -> None:
    """Send a stream's events as they come, but events produced together (an upstream read that held
    several) in one write: a sender task writes whatever is queued whenever the producer pauses.
    A slow client holds the producer back once `_HIGH_WATER` bytes are queued."""
    queued: list[bytes] = []
    size = 0
    wake, drained = asyncio.Event(), asyncio.Event()
    finished = False

    async def sender() -> None:
        nonlocal size
        while True:
            await wake.wait()
            wake.clear()
            while queued:
                data = b"".join(queued)
                queued.clear()
                size = 0
                drained.set()
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if finished:
                return

    writer = asyncio.ensure_future(sender())
    try:
        async for piece in events:
            queued.append(piece)
            size += len(piece)
            wake.set()
            if size > _HIGH_WATER:
                drained.clear()
                await drained.wait()
        finished = True
        wake.set()
        await writer
    finally:
        writer.cancel()


async def _send(send: Send, response: httpx2.Response) -> None:
    """A whole (non-streamed) response."""
    content = response.content
    headers = _raw(response)
    if "content-length" not in response.headers:
        headers.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})


def _raw(response: httpx2.Response) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in response.headers.raw]


def _visible_models(response: httpx2.Response, caller: Caller, api: str) -> httpx2.Response:
    """`/v1/models` as a key restricted to some models sees it: only those."""
    allowed = set(caller.key.models or ())
    if response.status_code != 200:
        return response
    data = json.loads(response.content)
    if api == "models":
        data["data"] = [entry for entry in data["data"] if entry["id"] in allowed]
        return json_response(200, data)
    if data.get("id") in allowed:
        return response
    return error_response(unknown_model(str(data.get("id")), sorted(allowed)))


def _metrics(engine: RouterEngine) -> httpx2.Response:
    metrics = engine.metrics
    if metrics is None:
        return json_response(404, {"error": _not_found("/metrics (install prometheus-client)")})
    return httpx2.Response(
        200, headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"}, content=metrics.exposition()
    )


def _body(message: str, code: str) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": None, "code": code}


def _too_large(limit: int) -> openai.APIStatusError:
    message = f"the request body is larger than this gateway's limit of {limit} bytes"
    return status_error(openai.APIStatusError, message, 413, body=_body(message, "request_too_large"))


def _not_found(path: str) -> dict[str, Any]:
    return {"message": f"no such endpoint: {path}", "type": "not_found_error", "param": None, "code": None}


def _internal() -> dict[str, Any]:
    message = "the gateway failed to answer (see its log)"
    return {"message": message, "type": "server_error", "param": None, "code": None}


def _busy(limit: int) -> dict[str, Any]:
    message = f"the gateway is serving its limit of {limit} requests per worker (gateway.max_connections); retry soon"
    return {"message": message, "type": "server_error", "param": None, "code": "overloaded"}


def _forbidden() -> dict[str, Any]:
    message = "the admin endpoints need the admin key (gateway.admin_key)"
    return {"message": message, "type": "permission_error", "param": None, "code": None}


__all__ = ["CONFIG_ENV", "Gateway", "create_app"]
