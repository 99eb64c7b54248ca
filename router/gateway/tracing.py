"""OpenTelemetry SERVER spans for the gateway's requests, continuing the caller's `traceparent`.

The router's own call span (`router/observe/otel.py`) is made a child of whatever span is current,
so with the server span current every call, attempt and log line of a request lands in the
caller's trace. Only used when `opentelemetry-api` is installed and `telemetry.otel` is not off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any


class ServerSpans:
    """Makes one SERVER span per request, its parent taken from the request's trace headers."""

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import propagate, trace

        self._extract = propagate.extract
        self._kind = trace.SpanKind.SERVER
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer("inference-router.gateway")

    @contextlib.contextmanager
    def span(self, headers: Mapping[str, str], method: str, route: str) -> Iterator[Any]:
        """The span for `method route` (current while the block runs); the caller sets the status code."""
        parent = self._extract(headers) if "traceparent" in headers else None
        attributes = {"http.request.method": method, "http.route": route}
        with self._tracer.start_as_current_span(
            f"{method} {route}", context=parent, kind=self._kind, attributes=attributes
        ) as span:
            yield span
