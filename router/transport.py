"""The routing transport: openai's own client code on top, the router's request path underneath.

`AsyncRouter` is an `openai.AsyncOpenAI` whose HTTP client sends nothing over the network: this
transport reads each request openai builds (`parse`, the stream helpers, raw and streaming
responses, embeddings, legacy completions, the Responses API, models), hands it to the one
request path, and answers with the HTTP response openai expects — the JSON or SSE it would have
got from a provider, plus the route record in `x-inference-router-*` headers. Failures come
back as OpenAI-shaped error responses that carry the router's own exception, which the client
raises as is (`AsyncRouter._make_status_error`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import openai
from openai.types.chat import ChatCompletion

from providers import Answered, ProviderError, RawEvent
from router.engine import RouterEngine, timeout_seconds
from router.errors import bad_request, not_routed, to_caller_error, unknown_model, wire_error
from router.path.hints import RouteHints
from router.path.record import ROUTE_EXTENSION, RouteRecord, route_headers, route_of
from router.path.streaming import RouterStream

T = TypeVar("T")
ERROR_EXTENSION = "inference_router.error"
"""Where an error response keeps the router's exception, for the client to raise as is."""
ROUTED = {
    "chat/completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
}
"""POST paths (after `/v1/`) and the endpoint each is."""
_REQUIRED = {"chat": "messages", "completions": "prompt", "embeddings": "input"}
"""The field each endpoint cannot do without (named in the 400, as OpenAI names it)."""
_NOT_FORWARDED = frozenset(
    {
        "authorization",
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "host",
        "user-agent",
        "openai-organization",
        "openai-project",
        "idempotency-key",
    }
)
"""Headers openai sets on every request: the backend gets its own, never these."""


def api_path(url: httpx2.URL) -> str:
    """`http://inference-router.invalid/v1/chat/completions` → `chat/completions`."""
    path = url.path
    return path.split("/v1/", 1)[1] if "/v1/" in path else path.lstrip("/")


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The caller's own extra headers, for the backend (openai's and the client's auth left out)."""
    kept = {
        k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED and not k.lower().startswith("x-stainless")
    }
    return kept or None


def json_response(
    status: int, payload: Any, *, headers: Mapping[str, str] | None = None, **extensions: Any
) -> httpx2.Response:
    """An HTTP response with a JSON body (and what the client should know of it, in `extensions`)."""
    return httpx2.Response(
        status,
        headers={"content-type": "application/json", **(headers or {})},
        content=json.dumps(payload).encode(),
        extensions=extensions,
    )


def error_response(error: openai.APIError) -> httpx2.Response:
    """The OpenAI-shaped error response for `error`, carrying the exception itself."""
    status, headers, payload = wire_error(error)
    route = getattr(error, "route", None)
    if isinstance(route, RouteRecord):
        headers.update(route_headers(route))
    return json_response(status, payload, headers=headers, **{ERROR_EXTENSION: error, ROUTE_EXTENSION: route})


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One OpenAI-wire HTTP request, whichever door it came through: the routing transport under the
    openai subclasses, or the gateway's HTTP server."""

    method: str
    path: str
    """The API path after `/v1/`: `chat/completions`, `models/{id}`, …"""
    headers: Mapping[str, str]
    content: bytes
    query: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    """The caller's bound on the whole call (None: the config's deadlines alone)."""


Admit = Callable[[str, str, RouteHints], Awaitable[RouteHints]]
"""`(endpoint, model, hints) -> hints`: a door's say before a request is routed (the gateway checks the
caller's key, limits and budget here, raising an `openai.APIError`, and adds the key's tags)."""


async def serve_request(engine: RouterEngine, request: httpx2.Request, content: bytes) -> httpx2.Response:
    """Answer one request openai built, through the request path; errors become error responses."""
    wire = WireRequest(
        request.method,
        api_path(request.url),
        request.headers,
        content,
        dict(request.url.params),
        timeout_seconds(request.extensions.get("timeout")),
    )
    return await serve_wire(engine, wire)


async def serve_wire(engine: RouterEngine, wire: WireRequest, *, admit: Admit | None = None) -> httpx2.Response:
    """Answer one OpenAI-wire request through the request path: the JSON or SSE a provider would send,
    the route record in headers; every failure as an OpenAI-shaped error response."""
    try:
        return await _serve(engine, wire, admit)
    except openai.APIError as error:
        return error_response(error)


async def _serve(engine: RouterEngine, wire: WireRequest, admit: Admit | None) -> httpx2.Response:
    path = wire.path
    method = wire.method.upper()
    if method == "GET" and (path == "models" or path.startswith("models/")):
        return _models(engine, path.removeprefix("models").strip("/"))
    if path.startswith("responses/") and method in ("GET", "DELETE"):
        return await _stored_response(engine, method, path, wire.query)
    endpoint = ROUTED.get(path)
    if endpoint is None or method != "POST":
        raise not_routed(method, path)
    try:
        body = json.loads(wire.content) if wire.content else {}
    except ValueError:
        raise bad_request("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.pop("model", None)
    if not isinstance(model, str):
        raise bad_request("`model` is required: an alias or a deployment's model id", param="model")
    required = _REQUIRED.get(endpoint)
    if required is not None and required not in body:
        raise bad_request(f"`{required}` is required", param=required)
    try:
        hints = RouteHints.coerce(body.pop("route", None))
    except ValueError as exc:
        raise bad_request(f"route: {exc}", param="route") from None
    stream = body.pop("stream", False) is True
    options = body.get("stream_options")
    wants_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
    if admit is not None:
        hints = await admit(endpoint, model, hints)
    result = await engine.route(
        endpoint,
        model,
        body,
        stream=stream,
        hints=hints,
        timeout_s=wire.timeout_s,
        extra_headers=forwarded_headers(wire.headers),
        extra_query=dict(wire.query) or None,
        caller_wants_usage=wants_usage,
    )
    return answer_response(result)


def answer_response(result: ChatCompletion | Answered | RouterStream) -> httpx2.Response:
    """What the path returned, as the HTTP response a provider would have sent (route headers added)."""
    if isinstance(result, RouterStream):
        record = result.route
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream", **route_headers(record)},
            stream=SSEBody(result),
            extensions={ROUTE_EXTENSION: record},
        )
    record = route_of(result)
    content = result.content if isinstance(result, Answered) else result.model_dump_json(exclude_unset=True).encode()
    return httpx2.Response(
        200,
        headers={"content-type": "application/json", **route_headers(record)},
        content=content,
        extensions={ROUTE_EXTENSION: record},
    )


class SSEBody(httpx2.AsyncByteStream):
    """A routed stream as the SSE bytes a provider sends; a break after the first token raises the
    router's `StreamInterruptedError` out of the read, so openai's stream raises it to the caller."""

    def __init__(self, stream: RouterStream) -> None:
        self.stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.events(over_http=False)

    async def events(self, *, over_http: bool) -> AsyncGenerator[bytes, None]:
        """The stream's SSE bytes. `over_http` (the gateway): the route record rides on the last event as
        `"inference_router"` (ending events — finish reason, usage — are held until the next one comes), and
        a break ends the stream with an `error` event and no `[DONE]`, as providers signal one."""
        endpoint = self.stream.route.endpoint
        held: list[tuple[bytes, bytes]] = []
        try:
            async for item in self.stream:
                if isinstance(item, RawEvent):
                    event, data = item.event, item.data
                else:
                    event, data = b"", item.model_dump_json(exclude_unset=True).encode()
                if over_http and _ends(item, data):
                    held.append((event, data))
                    continue
                for waiting in held:
                    yield _sse(*waiting)
                held.clear()
                yield _sse(event, data)
        except openai.APIError as error:
            if not over_http:
                raise
            for waiting in held:
                yield _sse(*waiting)
            _, _, payload = wire_error(error)
            yield _sse(b"error" if endpoint == "responses" else b"", json.dumps(payload).encode())
            return
        if held:
            event, data = held[-1]
            held[-1] = (event, _with_field(data, "inference_router", _record_data(self.stream.route)))
        for waiting in held:
            yield _sse(*waiting)
        if endpoint != "responses":  # the Responses API ends with its `response.completed` event
            yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        await self.stream.close()


_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"|"usage"\s*:\s*\{')


def _ends(item: Any, data: bytes) -> bool:
    """Whether an event may be a stream's last: a finish reason, the usage, or the Responses API's end."""
    if isinstance(item, RawEvent):
        return item.event == b"response.completed" or _FINISHED.search(data) is not None
    return item.usage is not None or any(choice.finish_reason is not None for choice in item.choices)


def _sse(event: bytes, data: bytes) -> bytes:
    """One server-sent event."""
    return (b"event: " + event + b"\n" if event else b"") + b"data: " + data + b"\n\n"


def _with_field(data: bytes, name: str, value: Any) -> bytes:
    """A JSON object's bytes with one more top-level field, spliced in (the rest stays byte for byte)."""
    body = data.rstrip()
    if not body.endswith(b"}"):
        return data
    inner = body[:-1].rstrip()
    comma = b"" if inner.endswith(b"{") else b","
    return inner + comma + json.dumps(name).encode() + b":" + _compact(value) + b"}"


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _record_data(record: RouteRecord) -> dict[str, Any]:
    """The route record as the final event's `inference_router` field: what served, what was tried, cost
    (plain fields, not `to_dict()`: this runs once per stream and must be cheap)."""
    usage = record.usage
    return {
        "requested_model": record.requested_model,
        "alias": record.alias,
        "endpoint": record.endpoint,
        "backend": record.backend,
        "provider": record.provider,
        "model": record.model,
        "fallback": record.fallback,
        "rule": record.rule,
        "policy": record.policy,
        "tags": record.tags,
        "cached": record.cached,
        "latency_s": record.latency_s,
        "ttft_s": record.ttft_s,
        "cost_usd": record.cost_usd,
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
        },
        "attempts": [
            {"backend": a.backend, "model": a.model, "outcome": a.outcome, "seconds": round(a.seconds, 6)}
            for a in record.attempts
        ],
        "complete": record.complete,
    }


def _models(engine: RouterEngine, model_id: str) -> httpx2.Response:
    """`models.list()` / `models.retrieve()` from the config: aliases first, then deployment model ids."""
    table = engine.path.table
    names = list(table.routes)
    names += sorted({d.candidate.model for route in table.routes.values() for d in route.deployments} - set(names))
    created = int(time.time())
    entries = [{"id": name, "object": "model", "created": created, "owned_by": "inference-router"} for name in names]
    if not model_id:
        return json_response(200, {"object": "list", "data": entries})
    for entry in entries:
        if entry["id"] == model_id:
            return json_response(200, entry)
    raise unknown_model(model_id, list(table.routes))


async def _stored_response(engine: RouterEngine, method: str, path: str, query: Mapping[str, str]) -> httpx2.Response:
    """`responses.retrieve` / `delete` / `input_items.list`: asked of the deployment that holds the answer."""
    response_id = path.split("/")[1]
    home = engine.homes.get(response_id)
    deployment = engine.path.table.deployment(home) if home is not None else None
    if deployment is None:
        raise not_routed(method, path) if home is None else bad_request(f"{home} is no longer configured")
    failed: ProviderError | None = None
    try:
        status, headers, content = await deployment.adapter.relay(engine.client, method, "/" + path, params=dict(query))
    except ProviderError as failure:
        failed = failure
    if failed is not None:  # raised outside the except: no chain back to the backend's request
        raise to_caller_error(failed, [], None, url=deployment.adapter.base_url)
    return httpx2.Response(status, headers=headers, content=content)


class SyncRoutingTransport(httpx2.BaseTransport):
    """The routing transport for the sync `Router`: each request runs on the router's event-loop thread."""

    def __init__(self, engine: RouterEngine, call: Callable[[Callable[[], Awaitable[Any]]], Any]) -> None:
        self.engine = engine
        self._call = call

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        content = request.read()

        async def serve() -> httpx2.Response:
            return await serve_request(self.engine, request, content)

        response: httpx2.Response = self._call(serve)
        stream = response.stream
        if isinstance(stream, SSEBody):
            response.stream = SyncSSEBody(stream, self._call)
        return response


class SyncSSEBody(httpx2.SyncByteStream):
    """An `SSEBody` read from another thread, one event-loop hop per piece."""

    def __init__(self, body: SSEBody, call: Callable[[Callable[[], Awaitable[Any]]], Any]) -> None:
        self._body = body
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        pieces = self._body.__aiter__()
        while True:
            try:
                yield self._call(pieces.__anext__)
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._call(self._body.aclose)


class RoutingTransport(httpx2.AsyncBaseTransport):
    """Hands every request of the openai client above it to the router's request path."""

    def __init__(self, engine: RouterEngine) -> None:
        self.engine = engine

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await serve_request(self.engine, request, await request.aread())
