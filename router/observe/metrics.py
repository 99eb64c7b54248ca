"""Prometheus metrics for the router: calls, attempts, errors, latency, tokens, cost, circuits.

`PrometheusMetrics` counts the request path's events into its own `CollectorRegistry` (so two
routers in one process never collide on the global one); scrape it with `serve(port)` or put
`exposition()` behind your own endpoint. Labels are bounded by the config: `alias`, `deployment`
(`backend/model`) and outcome kinds — never a request's content or tags.
prometheus_client is imported only when the observer is made: `pip install 'inference-router[prometheus]'`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from router.observe.otel import NOT_FAILURES
from router.path.events import CallInfo, CircuitChange, Observer
from router.path.record import Attempt, RouteRecord

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "CIRCUIT_STATES",
    "DURATION_BUCKETS",
    "MULTIPROCESS_ENV",
    "TTFT_BUCKETS",
    "PrometheusMetrics",
    "process_ended",
    "prometheus_available",
]

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
"""Seconds: a cached or tiny answer at the bottom, a long reasoning completion at the top."""
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Seconds to the first token: fast inference hardware answers in tens of ms, a queued GPU in seconds."""
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus-client's multiprocess mode keeps each process's values (read at its import)."""
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
"""The value of `circuit_state` for each state."""


def prometheus_available() -> bool:
    """Whether prometheus-client is installed (the `prometheus` extra)."""
    try:
        return importlib.util.find_spec("prometheus_client") is not None
    except ImportError:  # a None entry in sys.modules (the package deliberately blocked)
        return False


def _deployment(backend: str, model: str) -> str:
    return f"{backend}/{model}"


class PrometheusMetrics(Observer):
    """Counts calls and attempts into Prometheus metrics named `{namespace}_…` in `registry`.

    `registry=None` makes a fresh `CollectorRegistry` (`self.registry`); pass
    `prometheus_client.REGISTRY` to publish on the process-wide default one instead.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "inference_router") -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as error:
            raise ImportError(
                "PrometheusMetrics needs prometheus-client: pip install 'inference-router[prometheus]'"
            ) from error
        self.registry = registry if registry is not None else CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "requests",
            "Calls answered, by alias and outcome (ok, error, cached).",
            ["alias", "outcome"],
            namespace=namespace,
            registry=registry,
        )
        self.attempts = Counter(
            "attempts",
            "Requests to a deployment, by outcome (ok or the failure kind).",
            ["deployment", "outcome"],
            namespace=namespace,
            registry=registry,
        )
        self.errors = Counter(
            "errors",
            "Failed attempts, by deployment and failure kind.",
            ["deployment", "error_class"],
            namespace=namespace,
            registry=registry,
        )
        self.cache_hits = Counter(
            "cache_hits", "Calls answered from the response cache.", ["alias"], namespace=namespace, registry=registry
        )
        self.in_flight = Gauge(
            "in_flight",
            "Attempts outstanding on a deployment now.",
            ["deployment"],
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livesum",  # several processes (gateway workers): the sum of the live ones
        )
        self.request_duration = Histogram(
            "request_duration_seconds",
            "Seconds a successful attempt took (a stream's: until it ended).",
            ["deployment"],
            buckets=DURATION_BUCKETS,
            namespace=namespace,
            registry=registry,
        )
        self.ttft = Histogram(
            "ttft_seconds",
            "Seconds to the first token of a served streamed call.",
            ["deployment"],
            buckets=TTFT_BUCKETS,
            namespace=namespace,
            registry=registry,
        )
        self.cost = Counter(
            "cost_usd",
            "US dollars spent, by the deployment that answered.",
            ["deployment"],
            namespace=namespace,
            registry=registry,
        )
        self.tokens = Counter(
            "tokens",
            "Tokens billed, by deployment and kind (input, output, cached).",
            ["deployment", "kind"],
            namespace=namespace,
            registry=registry,
        )
        self.circuit_state = Gauge(
            "circuit_state",
            "A deployment's circuit: 0 closed, 1 half-open, 2 open.",
            ["deployment"],
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livemax",  # several processes: the worst state any live one sees
        )
        self._server: tuple[Any, Any] | None = None
        """The scrape server and its thread, while `serve` runs one."""

    def attempt_started(self, call: CallInfo, attempt: Attempt) -> None:
        self.in_flight.labels(_deployment(attempt.backend, attempt.model)).inc()

    def attempt_ended(self, call: CallInfo, attempt: Attempt) -> None:
        deployment = _deployment(attempt.backend, attempt.model)
        self.in_flight.labels(deployment).dec()
        self.attempts.labels(deployment, attempt.outcome).inc()
        if attempt.outcome == "ok":
            self.request_duration.labels(deployment).observe(attempt.seconds)
        elif attempt.outcome not in NOT_FAILURES:
            self.errors.labels(deployment, attempt.outcome).inc()

    def call_succeeded(self, call: CallInfo) -> None:
        record = call.record
        alias = _alias(record)
        if record.cached:
            self.requests.labels(alias, "cached").inc()
            self.cache_hits.labels(alias).inc()
            return
        self.requests.labels(alias, "ok").inc()
        if record.backend is not None and record.model is not None:
            deployment = _deployment(record.backend, record.model)
            if record.stream and record.ttft_s is not None:
                self.ttft.labels(deployment).observe(record.ttft_s)
            self._spent(deployment, record)

    def call_failed(self, call: CallInfo, error: BaseException) -> None:
        record = call.record
        self.requests.labels(_alias(record), "error").inc()
        if not record.cached and record.backend is not None and record.model is not None:
            self._spent(_deployment(record.backend, record.model), record)  # a stream that broke was still billed

    def _spent(self, deployment: str, record: RouteRecord) -> None:
        if record.cost_usd:
            self.cost.labels(deployment).inc(record.cost_usd)
        usage = record.usage
        if usage is not None:
            for kind, count in (
                ("input", usage.prompt_tokens),
                ("output", usage.completion_tokens),
                ("cached", usage.cached_prompt_tokens),
            ):
                if count > 0:
                    self.tokens.labels(deployment, kind).inc(count)

    def circuit_changed(self, change: CircuitChange) -> None:
        value = CIRCUIT_STATES.get(change.state)
        if value is not None:
            self.circuit_state.labels(change.deployment).set(value)

    def exposition(self) -> str:
        """The registry in the Prometheus text format, for an endpoint of your own. In prometheus-client's
        multiprocess mode (`PROMETHEUS_MULTIPROC_DIR` set, as `inference-router serve --workers N` does)
        every process's metrics, summed: a scrape that reaches any one worker sees them all."""
        from prometheus_client import generate_latest

        if os.environ.get(MULTIPROCESS_ENV):
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry).decode()
        return generate_latest(self.registry).decode()

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve `/metrics` for this registry on a daemon thread (loopback unless `addr` says otherwise),
        until `close()`."""
        from prometheus_client import start_http_server

        self._server = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        """Stop serving (`serve`) and free its port; blocks up to half a second (the server's poll)."""
        served, self._server = self._server, None
        if served is not None:
            server, thread = served
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def process_ended(pid: int) -> None:
    """In multiprocess mode, drop a process's live gauges (its in-flight count, circuit states) once it
    has exited; its counters and histograms stay in the sums."""
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _alias(record: RouteRecord) -> str:
    """The `alias` label: the alias that matched, else the model name the caller asked for."""
    return record.alias or record.requested_model
