"""The OpenTelemetry and Prometheus observers, fed synthetic call events (no router, no network).

Each test builds the route record, attempts and usage by hand and plays the events in the order
the request path guarantees (call start, attempt start/end pairs, then one success or failure),
then reads what the exporter saw: finished spans from an in-memory exporter on a private
TracerProvider, or the Prometheus text exposition of the observer's own registry.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from providers import Usage
from router.observe.metrics import PrometheusMetrics, prometheus_available
from router.observe.otel import OTelObserver, otel_available, request_attributes
from router.path.events import CallInfo, CircuitChange, Observer, Observers
from router.path.record import Attempt, RouteRecord

SECRET_PROMPT = "my password is hunter2"

REQUEST: dict[str, Any] = {
    "model": "fast",
    "messages": [{"role": "user", "content": SECRET_PROMPT}],
    "max_tokens": 256,
    "temperature": 0.2,
    "top_p": 0.9,
    "seed": 7,
}


def new_call(*, stream: bool = False, request: dict[str, Any] | None = None) -> CallInfo:
    record = RouteRecord(
        requested_model="fast", alias="fast", policy="cheapest", stream=stream, tags=["team-a", "batch"], rule="night"
    )
    return CallInfo(record, request if request is not None else REQUEST)


def attempt(
    observer: Observer,
    call: CallInfo,
    backend: str,
    provider: str,
    model: str,
    outcome: str,
    seconds: float,
    status: int | None = None,
) -> Attempt:
    """One attempt, started and ended, appended to the record as the path does."""
    tried = Attempt(backend, provider, model, "ok", 0.0)
    call.record.attempts.append(tried)
    observer.attempt_started(call, tried)
    tried.outcome, tried.seconds, tried.status_code = outcome, seconds, status
    observer.attempt_ended(call, tried)
    return tried


def serve(call: CallInfo, backend: str, provider: str, model: str, *, ttft_s: float | None = None) -> None:
    record = call.record
    record.backend, record.provider, record.model = backend, provider, model
    record.usage = Usage(prompt_tokens=120, completion_tokens=30, total_tokens=150, cached_prompt_tokens=100)
    record.cost_usd = 0.0021
    record.latency_s = 1.4
    record.ttft_s = ttft_s
    record.complete = True


def fallback_call(observer: Observer, *, stream: bool = False) -> CallInfo:
    """groq is rate limited (429), the router falls over to cerebras, which answers."""
    call = new_call(stream=stream)
    observer.call_started(call)
    attempt(observer, call, "groq", "groq", "llama", "rate_limited", 0.12, 429)
    observer.fell_back(call, "groq/llama", "cerebras/llama")
    attempt(observer, call, "cerebras", "cerebras", "llama", "ok", 0.4, 200)
    serve(call, "cerebras", "cerebras", "llama", ttft_s=0.18 if stream else None)
    observer.call_succeeded(call)
    return call


# --- OpenTelemetry -----------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()  # private: the global provider is never set
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def otel(provider: TracerProvider) -> OTelObserver:
    return OTelObserver(provider, servers={"groq": "https://api.groq.com/openai/v1", "local": "http://127.0.0.1:8080"})


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_availability_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert otel_available()
    assert prometheus_available()
    for name in ("opentelemetry", "opentelemetry.trace"):  # as if the extras were not installed
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    assert not otel_available()
    assert not prometheus_available()
    with pytest.raises(ImportError, match=r"inference-router\[otel\]"):
        OTelObserver()
    with pytest.raises(ImportError, match=r"inference-router\[prometheus\]"):
        PrometheusMetrics()


def test_call_span_with_attempt_children(otel: OTelObserver, exporter: InMemorySpanExporter) -> None:
    call = fallback_call(otel)
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    named = by_name(spans)
    (root,) = named["chat fast"]
    (failed, served) = named["chat llama"]
    assert root.kind is SpanKind.CLIENT and failed.kind is SpanKind.CLIENT
    assert root.parent is None
    assert root.context is not None
    for child in (failed, served):
        assert child.parent is not None
        assert child.parent.span_id == root.context.span_id
        assert child.context is not None and child.context.trace_id == root.context.trace_id
    assert root.start_time is not None and root.start_time == int(call.started_at * 1e9)
    assert root.end_time is not None and served.end_time is not None and root.end_time >= served.end_time

    assert attrs(root) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "fast",
        "gen_ai.request.stream": False,
        "gen_ai.request.max_tokens": 256,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.seed": 7,
        "inference_router.policy": "cheapest",
        "inference_router.alias": "fast",
        "gen_ai.response.model": "llama",
        "gen_ai.provider.name": "cerebras",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "inference_router.backend": "cerebras",
        "inference_router.rule": "night",
        "inference_router.cached": False,
        "inference_router.cost_usd": 0.0021,
        "inference_router.latency_s": 1.4,
        "inference_router.attempts": 2,
        "inference_router.tags": ("team-a", "batch"),
    }
    assert root.status.status_code is StatusCode.UNSET

    assert attrs(failed) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "llama",
        "gen_ai.request.max_tokens": 256,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.seed": 7,
        "gen_ai.provider.name": "groq",
        "gen_ai.system": "groq",
        "server.address": "api.groq.com",
        "inference_router.backend": "groq",
        "inference_router.outcome": "rate_limited",
        "inference_router.sent": True,
        "http.response.status_code": 429,
        "error.type": "rate_limited",
    }
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description is None

    served_attrs = attrs(served)
    assert served_attrs["gen_ai.provider.name"] == "cerebras"
    assert served_attrs["inference_router.outcome"] == "ok"
    assert "error.type" not in served_attrs and "server.address" not in served_attrs
    assert served.status.status_code is StatusCode.UNSET

    (event,) = root.events
    assert event.name == "fallback"
    assert dict(event.attributes or {}) == {
        "inference_router.fallback.from": "groq/llama",
        "inference_router.fallback.to": "cerebras/llama",
    }
    assert call.state == {}  # nothing of the observer's outlives the call


def test_spans_carry_no_message_content(otel: OTelObserver, exporter: InMemorySpanExporter) -> None:
    fallback_call(otel)
    call = new_call()
    otel.call_started(call)
    attempt(otel, call, "groq", "groq", "llama", "bad_request", 0.05, 400)
    otel.call_failed(call, ValueError(SECRET_PROMPT))
    for span in exporter.get_finished_spans():
        texts = [str(value) for value in attrs(span).values()]
        texts += [str(value) for event in span.events for value in (event.attributes or {}).values()]
        texts.append(span.status.description or "")
        assert not any("hunter2" in text for text in texts), span.name
        assert not any(key.startswith(("gen_ai.input", "gen_ai.prompt")) for key in attrs(span))


def test_failed_call_records_the_exception_class(otel: OTelObserver, exporter: InMemorySpanExporter) -> None:
    class RateLimitError(Exception):
        pass

    call = new_call(stream=True)
    otel.call_started(call)
    attempt(otel, call, "groq", "groq", "llama", "rate_limited", 0.1, 429)
    attempt(otel, call, "local", "llamacpp", "qwen", "timeout", 30.0)
    otel.call_failed(call, RateLimitError("all deployments failed"))
    named = by_name(exporter.get_finished_spans())
    (root,) = named["chat fast"]
    assert root.status.status_code is StatusCode.ERROR
    assert attrs(root)["error.type"] == "RateLimitError"
    assert attrs(root)["inference_router.attempts"] == 2
    assert attrs(root)["gen_ai.request.stream"] is True
    assert "gen_ai.response.model" not in attrs(root) and "gen_ai.usage.input_tokens" not in attrs(root)
    (timed_out,) = named["chat qwen"]
    assert attrs(timed_out)["error.type"] == "timeout"
    assert attrs(timed_out)["server.address"] == "127.0.0.1"
    assert attrs(timed_out)["server.port"] == 8080
    assert timed_out.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("outcome", ["hedge_lost", "cancelled"])
def test_a_lost_hedge_or_cancellation_is_not_an_error(
    otel: OTelObserver, exporter: InMemorySpanExporter, outcome: str
) -> None:
    call = new_call()
    otel.call_started(call)
    attempt(otel, call, "groq", "groq", "llama", outcome, 0.3)
    attempt(otel, call, "cerebras", "cerebras", "llama", "ok", 0.2)
    serve(call, "cerebras", "cerebras", "llama")
    otel.call_succeeded(call)
    lost = next(s for s in exporter.get_finished_spans() if attrs(s).get("inference_router.backend") == "groq")
    assert lost.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs(lost)
    assert attrs(lost)["inference_router.outcome"] == outcome


def test_cached_call_has_no_attempt_spans(otel: OTelObserver, exporter: InMemorySpanExporter) -> None:
    call = new_call()
    otel.call_started(call)
    serve(call, "cerebras", "cerebras", "llama")
    call.record.cached, call.record.cost_usd = True, 0.0
    otel.call_succeeded(call)
    (root,) = exporter.get_finished_spans()
    assert attrs(root)["inference_router.cached"] is True
    assert attrs(root)["inference_router.cost_usd"] == 0.0
    assert attrs(root)["inference_router.attempts"] == 0


def test_call_span_nests_under_the_callers_span(
    otel: OTelObserver, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with provider.get_tracer("app").start_as_current_span("handle request") as outer:
        call = new_call()
        otel.call_started(call)
    attempt(otel, call, "groq", "groq", "llama", "ok", 0.2)  # later events need not run in that context
    otel.call_succeeded(call)
    (root,) = by_name(exporter.get_finished_spans())["chat fast"]
    assert root.parent is not None and root.parent.span_id == outer.get_span_context().span_id


def test_an_attempt_left_open_is_ended_with_the_call(otel: OTelObserver, exporter: InMemorySpanExporter) -> None:
    call = new_call()
    otel.call_started(call)
    stuck = Attempt("groq", "groq", "llama", "ok", 0.0)
    call.record.attempts.append(stuck)
    otel.attempt_started(call, stuck)
    stuck.outcome = "stream_broken"
    otel.call_failed(call, RuntimeError("broken"))
    named = by_name(exporter.get_finished_spans())
    (left,) = named["chat llama"]
    assert attrs(left)["error.type"] == "stream_broken"
    assert call.state == {}


def test_two_observers_keep_separate_spans(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    other_exporter = InMemorySpanExporter()
    other_provider = TracerProvider()
    other_provider.add_span_processor(SimpleSpanProcessor(other_exporter))
    first, second = OTelObserver(provider), OTelObserver(other_provider)

    fallback_call(Observers([first, second]))
    assert len(exporter.get_finished_spans()) == 3
    assert len(other_exporter.get_finished_spans()) == 3
    assert trace.get_tracer_provider() is not provider  # the global provider was left alone


def test_request_attributes_take_only_sampling_parameters() -> None:
    assert request_attributes({"max_completion_tokens": 64, "max_tokens": 10, "temperature": 1, "n": 3}) == {
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 1.0,
        "gen_ai.request.choice.count": 3,
    }
    assert request_attributes({"temperature": None, "seed": True, "top_p": "high", "n": 1}) == {}


# --- Prometheus --------------------------------------------------------------------------------


@pytest.fixture
def prom() -> PrometheusMetrics:
    return PrometheusMetrics()


def lines(metrics: PrometheusMetrics) -> set[str]:
    return set(metrics.exposition().splitlines())


def test_attempts_errors_and_tokens_are_counted(prom: PrometheusMetrics) -> None:
    fallback_call(prom)
    fallback_call(prom)
    text = lines(prom)
    assert {
        'inference_router_requests_total{alias="fast",outcome="ok"} 2.0',
        'inference_router_attempts_total{deployment="groq/llama",outcome="rate_limited"} 2.0',
        'inference_router_attempts_total{deployment="cerebras/llama",outcome="ok"} 2.0',
        'inference_router_errors_total{deployment="groq/llama",error_class="rate_limited"} 2.0',
        'inference_router_tokens_total{deployment="cerebras/llama",kind="input"} 240.0',
        'inference_router_tokens_total{deployment="cerebras/llama",kind="output"} 60.0',
        'inference_router_tokens_total{deployment="cerebras/llama",kind="cached"} 200.0',
        'inference_router_cost_usd_total{deployment="cerebras/llama"} 0.0042',
        'inference_router_in_flight{deployment="groq/llama"} 0.0',
        'inference_router_in_flight{deployment="cerebras/llama"} 0.0',
        'inference_router_request_duration_seconds_count{deployment="cerebras/llama"} 2.0',
        'inference_router_request_duration_seconds_sum{deployment="cerebras/llama"} 0.8',
        'inference_router_request_duration_seconds_bucket{deployment="cerebras/llama",le="0.25"} 0.0',
        'inference_router_request_duration_seconds_bucket{deployment="cerebras/llama",le="0.5"} 2.0',
        'inference_router_request_duration_seconds_bucket{deployment="cerebras/llama",le="+Inf"} 2.0',
    } <= text
    assert not any(line.startswith("inference_router_errors_total") and "cerebras" in line for line in text)
    assert not any(
        line.startswith("inference_router_request_duration_seconds_count") and "groq" in line for line in text
    )
    assert not any(line.startswith("inference_router_ttft_seconds_count") for line in text)  # not streamed


def test_in_flight_gauge_rises_and_falls(prom: PrometheusMetrics) -> None:
    call = new_call()
    prom.call_started(call)
    first, second = Attempt("groq", "groq", "llama", "ok", 0.0), Attempt("groq", "groq", "llama", "ok", 0.0)
    prom.attempt_started(call, first)
    prom.attempt_started(call, second)
    assert 'inference_router_in_flight{deployment="groq/llama"} 2.0' in lines(prom)
    first.outcome, second.outcome = "hedge_lost", "ok"
    prom.attempt_ended(call, first)
    assert 'inference_router_in_flight{deployment="groq/llama"} 1.0' in lines(prom)
    prom.attempt_ended(call, second)
    text = lines(prom)
    assert 'inference_router_in_flight{deployment="groq/llama"} 0.0' in text
    assert 'inference_router_attempts_total{deployment="groq/llama",outcome="hedge_lost"} 1.0' in text
    assert not any(line.startswith("inference_router_errors_total{") for line in text)  # a lost hedge is no error


def test_streamed_call_observes_ttft(prom: PrometheusMetrics) -> None:
    fallback_call(prom, stream=True)
    text = lines(prom)
    assert 'inference_router_ttft_seconds_count{deployment="cerebras/llama"} 1.0' in text
    assert 'inference_router_ttft_seconds_bucket{deployment="cerebras/llama",le="0.1"} 0.0' in text
    assert 'inference_router_ttft_seconds_bucket{deployment="cerebras/llama",le="0.2"} 1.0' in text


def test_cached_and_failed_calls(prom: PrometheusMetrics) -> None:
    cached = new_call()
    prom.call_started(cached)
    serve(cached, "cerebras", "cerebras", "llama")
    cached.record.cached, cached.record.cost_usd = True, 0.0
    prom.call_succeeded(cached)

    failed = new_call()
    failed.record.alias = None
    failed.record.requested_model = "llama"
    prom.call_started(failed)
    attempt(prom, failed, "groq", "groq", "llama", "server_error", 0.5, 503)
    prom.call_failed(failed, RuntimeError("down"))

    text = lines(prom)
    assert 'inference_router_requests_total{alias="fast",outcome="cached"} 1.0' in text
    assert 'inference_router_cache_hits_total{alias="fast"} 1.0' in text
    assert 'inference_router_requests_total{alias="llama",outcome="error"} 1.0' in text
    assert 'inference_router_errors_total{deployment="groq/llama",error_class="server_error"} 1.0' in text
    assert not any(line.startswith("inference_router_tokens_total{") for line in text)  # a cache hit bills nothing
    assert not any(line.startswith("inference_router_cost_usd_total{") for line in text)


def test_circuit_state_gauge(prom: PrometheusMetrics) -> None:
    prom.circuit_changed(CircuitChange("groq/llama", "closed", "open", "5 consecutive failures"))
    prom.circuit_changed(CircuitChange("cerebras/llama", "closed", "open", "429"))
    prom.circuit_changed(CircuitChange("cerebras/llama", "open", "half_open", "probe"))
    assert 'inference_router_circuit_state{deployment="groq/llama"} 2.0' in lines(prom)
    assert 'inference_router_circuit_state{deployment="cerebras/llama"} 1.0' in lines(prom)
    prom.circuit_changed(CircuitChange("groq/llama", "half_open", "closed", "probe succeeded"))
    assert 'inference_router_circuit_state{deployment="groq/llama"} 0.0' in lines(prom)


def test_registries_are_private_and_namespaced() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()  # no duplicate-timeseries error
    custom = PrometheusMetrics(namespace="edge")
    fallback_call(first)
    assert 'inference_router_requests_total{alias="fast",outcome="ok"} 1.0' in lines(first)
    assert not any(line.startswith("inference_router_requests_total{") for line in lines(second))
    fallback_call(custom)
    assert 'edge_requests_total{alias="fast",outcome="ok"} 1.0' in lines(custom)
    assert REGISTRY.get_sample_value("inference_router_requests_total", {"alias": "fast", "outcome": "ok"}) is None
