"""OpenTelemetry tracing for the router: a span per call and a child span per attempt.

`OTelObserver` turns the request path's events into spans that follow the OpenTelemetry GenAI
semantic conventions (`gen_ai.*`), plus `inference_router.*` attributes for what only the router
knows (backend, rule, fallback, cost). Spans never carry message content, error messages or keys.
opentelemetry is imported only when an observer is made, so `import router.observe.otel` works without it
(`otel_available()` says whether it can be used): `pip install 'inference-router[otel]'`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from router.path.events import CallInfo, Observer
from router.path.record import Attempt, RouteRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

__all__ = ["NOT_FAILURES", "OTelObserver", "otel_available", "request_attributes"]

NOT_FAILURES = frozenset({"ok", "hedge_lost", "cancelled"})
"""Attempt outcomes that say nothing bad about the deployment: an answer, a hedge the other request
won, or a call the caller (or the router's own deadline) walked away from. Every other outcome is a
failure kind and marks the attempt span as an error."""

_NUMERIC_REQUEST_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


def otel_available() -> bool:
    """Whether opentelemetry-api is installed (the `otel` extra)."""
    try:  # opentelemetry is a namespace package: look for the API itself, not just the namespace
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ImportError:  # no opentelemetry at all (find_spec imports the parent package)
        return False


def _version() -> str:
    try:
        return package_version("inference-router")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0"


def request_attributes(request: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """The sampling parameters of a chat request as `gen_ai.request.*` attributes (never its messages)."""
    attributes: dict[str, AttributeValue] = {}
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        attributes["gen_ai.request.max_tokens"] = max_tokens
    for key, attribute in _NUMERIC_REQUEST_PARAMS.items():
        value = request.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[attribute] = float(value)
    seed = request.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        attributes["gen_ai.request.seed"] = seed
    choices = request.get("n")
    if isinstance(choices, int) and not isinstance(choices, bool) and choices != 1:
        attributes["gen_ai.request.choice.count"] = choices
    return attributes


def _server(base_url: str) -> dict[str, AttributeValue]:
    """`server.address` (and `server.port` when the URL names one) of a backend's base URL."""
    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    if not host:
        return {}
    attributes: dict[str, AttributeValue] = {"server.address": host}
    if port is not None:
        attributes["server.port"] = port
    return attributes


OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings", "responses": "chat"}
"""`gen_ai.operation.name` (GenAI semantic conventions) for each endpoint."""


@dataclass(slots=True)
class _CallSpans:
    """What one observer keeps in `CallInfo.state` for one call."""

    span: Span
    request: dict[str, AttributeValue]
    operation: str
    attempts: dict[int, Span] = field(default_factory=dict)
    """Open attempt spans by `id(attempt)` (an `Attempt` is mutable, so not hashable)."""


class OTelObserver(Observer):
    """Emits a CLIENT span `chat {requested_model}` per call and a child `chat {model}` per attempt.

    The call span's parent is whatever span is current when the call starts (the caller's), so
    router calls nest in the application's traces. `tracer_provider=None` uses the global one.
    `servers` maps a backend name to its base URL, for the `server.address` of its attempts.
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, servers: Mapping[str, str] | None = None
    ) -> None:
        try:
            from opentelemetry import trace
        except ImportError as error:
            raise ImportError("OTelObserver needs opentelemetry-api: pip install 'inference-router[otel]'") from error
        self.tracer = trace.get_tracer("inference-router", _version(), tracer_provider=tracer_provider)
        self._chosen_provider = tracer_provider is not None
        self._global_provider = trace.get_tracer_provider
        self._no_sdk = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._set_span_in_context = trace.set_span_in_context
        self._use_span = trace.use_span
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._servers = {backend: _server(url) for backend, url in (servers or {}).items()}
        self._key = f"otel:{id(self)}"  # one slot per observer, so two observers never share a span

    def _spans(self, call: CallInfo) -> _CallSpans | None:
        spans = call.state.get(self._key)
        return spans if isinstance(spans, _CallSpans) else None

    def _tracing(self) -> bool:
        """Whether spans go anywhere. With no provider given and no SDK installed as the global one
        (OTel's API alone answers with its proxy or no-op provider) a span records nothing: the call
        skips building it (checked per call, so an SDK set up after the router still gets spans)."""
        return self._chosen_provider or not isinstance(self._global_provider(), self._no_sdk)

    def call_started(self, call: CallInfo) -> None:
        if not self._tracing():
            return
        record = call.record
        request = request_attributes(call.request)
        operation = OPERATIONS.get(record.endpoint, "chat")
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": record.requested_model,
            "gen_ai.request.stream": record.stream,
            **request,
            "inference_router.policy": record.policy,
        }
        if record.alias is not None:
            attributes["inference_router.alias"] = record.alias
        span = self.tracer.start_span(
            f"{operation} {record.requested_model}",
            kind=self._client,
            attributes=attributes,
            start_time=int(call.started_at * 1e9),
        )
        call.state[self._key] = _CallSpans(span, request, operation)

    def call_scope(self, call: CallInfo) -> AbstractContextManager[object] | None:
        """Make the call span current while the router works on the call, so spans and logs made
        meanwhile (an HTTP client's, the application's hooks') belong to it."""
        spans = self._spans(call)
        if spans is None:
            return None
        return self._use_span(spans.span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    def attempt_started(self, call: CallInfo, attempt: Attempt) -> None:
        spans = self._spans(call)
        if spans is None:  # the observer was added mid-call: no call span to hang this on
            return
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": spans.operation,
            "gen_ai.request.model": attempt.model,
            **spans.request,
            "gen_ai.provider.name": attempt.provider,
            "gen_ai.system": attempt.provider,  # the name before semconv 1.37, still read by many backends
            **self._servers.get(attempt.backend, {}),
            "inference_router.backend": attempt.backend,
        }
        spans.attempts[id(attempt)] = self.tracer.start_span(
            f"{spans.operation} {attempt.model}",
            context=self._set_span_in_context(spans.span),
            kind=self._client,
            attributes=attributes,
        )

    def attempt_ended(self, call: CallInfo, attempt: Attempt) -> None:
        spans = self._spans(call)
        span = spans.attempts.pop(id(attempt), None) if spans else None
        if span is None:
            return
        self._end_attempt(span, attempt)

    def _end_attempt(self, span: Span, attempt: Attempt) -> None:
        span.set_attribute("inference_router.outcome", attempt.outcome)
        span.set_attribute("inference_router.sent", attempt.sent)
        if attempt.status_code is not None:
            span.set_attribute("http.response.status_code", attempt.status_code)
        if attempt.outcome not in NOT_FAILURES:
            span.set_attribute("error.type", attempt.outcome)
            span.set_status(self._error)  # no description: provider error text may echo the request
        span.end()

    def fell_back(self, call: CallInfo, from_deployment: str, to_deployment: str) -> None:
        spans = self._spans(call)
        if spans is not None:
            spans.span.add_event(
                "fallback",
                {"inference_router.fallback.from": from_deployment, "inference_router.fallback.to": to_deployment},
            )

    def call_succeeded(self, call: CallInfo) -> None:
        self._end_call(call, None)

    def call_failed(self, call: CallInfo, error: BaseException) -> None:
        self._end_call(call, error)

    def _end_call(self, call: CallInfo, error: BaseException | None) -> None:
        spans = call.state.pop(self._key, None)
        if not isinstance(spans, _CallSpans):
            return
        for attempt in call.record.attempts:  # the path ends every attempt first; close any it didn't
            left = spans.attempts.pop(id(attempt), None)
            if left is not None:
                self._end_attempt(left, attempt)
        for left in spans.attempts.values():
            left.end()
        span = spans.span
        span.set_attributes(_result_attributes(call.record))
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(self._error)
        span.end()


def _result_attributes(record: RouteRecord) -> dict[str, AttributeValue]:
    """What the call span learns at the end: who served, what it used and cost, how the router got there."""
    attributes: dict[str, AttributeValue] = {
        "inference_router.cached": record.cached,
        "inference_router.attempts": len(record.attempts),
        "inference_router.tags": list(record.tags),
    }
    optional: dict[str, AttributeValue | None] = {
        "gen_ai.response.model": record.model,
        "gen_ai.provider.name": record.provider,
        "gen_ai.response.time_to_first_chunk": record.ttft_s,
        "inference_router.backend": record.backend,
        "inference_router.rule": record.rule,
        "inference_router.fallback": record.fallback,
        "inference_router.cost_usd": record.cost_usd,
        "inference_router.latency_s": record.latency_s,
    }
    attributes.update({key: value for key, value in optional.items() if value is not None})
    usage = record.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if usage.cached_prompt_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_prompt_tokens
        if usage.reasoning_tokens:
            attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    return attributes
