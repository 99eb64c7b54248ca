"""The route record: what the router did for one call, attached to every response.

`route_of(response)` returns it for a `ChatCompletion` or a stream (complete once the stream
has ended). It rides on the response object as a private attribute, so `isinstance`,
equality and `model_dump()` of the openai types are unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from providers import RateLimitInfo, Usage
from router.config.eligibility import Exclusion

_ATTRIBUTE = "_inference_route"


@dataclass(slots=True)
class Attempt:
    """One try against one deployment."""

    backend: str
    provider: str
    model: str
    outcome: str
    """`ok`, or the failure kind (`rate_limited`, `timeout`, `stream_broken`, …)."""
    seconds: float
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    sent: bool = True
    """False when the router decided not to send it after all (circuit open, at its concurrency cap)."""

    def short(self) -> str:
        """`groq/openai/gpt-oss-120b rate_limited 0.12s`."""
        return f"{self.backend}/{self.model} {self.outcome} {self.seconds:.2f}s"


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    """One line of the ranking trace: a candidate in rank order with the inputs the policy saw."""

    alias: str
    rank: int
    candidate: str
    input_per_mtok: float | None
    output_per_mtok: float | None
    expected_cost_usd: float | None
    expected_ttft_s: float
    expected_duration_s: float
    expected_completion_s: float
    """`expected_duration_s` with the wait behind the requests already there (what `fastest` ranks by)."""
    load: float
    in_flight: int
    limited_for_s: float | None
    """Seconds until exhausted rate-limit headroom refills (such candidates rank last)."""


@dataclass(slots=True)
class RouteRecord:
    """Which backend served, what was tried on the way, how long it took, what it used."""

    requested_model: str
    alias: str | None
    policy: str
    stream: bool
    endpoint: str = "chat"
    """`chat`, `completions`, `embeddings` or `responses`."""
    tags: list[str] = field(default_factory=list)
    """The call's `route={"tags": [...]}`: usage is aggregated by them."""
    rule: str | None = None
    """The config rule that matched the call (its `name`, or `rules[i]`), if any."""
    backend: str | None = None
    provider: str | None = None
    model: str | None = None
    fallback: str | None = None
    """The fallback alias that served, when the requested one could not."""
    hedged: bool = False
    """A duplicate request was sent to a second deployment because the first was slow to answer."""
    recovered_after_chars: int | None = None
    """A stream broke after this many characters and another deployment continued it."""
    attempts: list[Attempt] = field(default_factory=list)
    latency_s: float | None = None
    ttft_s: float | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    """What the answer cost (0 for a cache hit; None without a per-token price)."""
    cached: bool = False
    """Served from the response cache: nothing was sent, nothing billed."""
    cache_age_s: float | None = None
    rate_limits: RateLimitInfo | None = None
    complete: bool = False
    """False until a stream has ended (or failed)."""
    ranking: list[RankedCandidate] = field(default_factory=list)
    """Every tier's eligible candidates in the order they were ranked, with the policy's inputs."""
    excluded: list[Exclusion] = field(default_factory=list)
    """Deployments left out before ranking, each with its reason."""

    def summary(self) -> str:
        """One line for logs and the CLI."""
        served = f"{self.backend}/{self.model}" if self.backend else "nobody"
        if self.fallback:
            served += f" (fallback {self.fallback})"
        tried = ", ".join(a.short() for a in self.attempts)
        latency = f" in {self.latency_s:.3f}s" if self.latency_s is not None else ""
        return f"{self.requested_model} → {served}{latency} [{tried}]"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        data = asdict(self)
        data["excluded"] = [{"candidate": e.candidate, "reason": e.reason} for e in self.excluded]
        data["rate_limits"] = (
            None
            if self.rate_limits is None
            else {key: asdict(window) for key, window in self.rate_limits.windows.items()}
        )
        return data


def attach_route(obj: object, record: RouteRecord) -> None:
    """Hang the record on a response without touching its fields."""
    object.__setattr__(obj, _ATTRIBUTE, record)


ROUTE_EXTENSION = "inference_router.route"
"""Where an HTTP response made by the router (the routing transport, the gateway) keeps its record."""


def route_of(obj: object) -> RouteRecord:
    """The route record of anything the router returned: a completion (parsed or not), embeddings,
    a Responses answer, a stream or stream helper, or a raw HTTP response (`with_raw_response`)."""
    record = getattr(obj, _ATTRIBUTE, None)
    if record is None:
        record = getattr(obj, "route", None)
    if record is None:  # raw responses and streams carry the HTTP response the routing transport made
        for name in ("http_response", "response", "_response", "_raw_stream"):
            inner = getattr(obj, name, None)
            if inner is None or inner is obj:
                continue
            extensions = getattr(inner, "extensions", None)
            if isinstance(extensions, dict) and isinstance(extensions.get(ROUTE_EXTENSION), RouteRecord):
                record = extensions[ROUTE_EXTENSION]
                break
            nested = getattr(inner, _ATTRIBUTE, None)
            if isinstance(nested, RouteRecord):
                record = nested
                break
    if not isinstance(record, RouteRecord):
        raise ValueError("this object was not returned by inference-router")
    return record


HEADER_PREFIX = "x-inference-router-"


def route_headers(record: RouteRecord) -> dict[str, str]:
    """The route record as HTTP response headers (`x-inference-router-*`; README "Route headers"):
    what served, how many attempts, what was tried, fallback, cache, cost. Values are ASCII."""
    headers = {
        HEADER_PREFIX + "endpoint": record.endpoint,
        HEADER_PREFIX + "attempts": str(sum(1 for a in record.attempts if a.sent)),
        HEADER_PREFIX + "cached": "true" if record.cached else "false",
    }
    if record.backend is not None:
        headers[HEADER_PREFIX + "backend"] = record.backend
        headers[HEADER_PREFIX + "provider"] = record.provider or ""
        headers[HEADER_PREFIX + "model"] = record.model or ""
    if record.alias is not None:
        headers[HEADER_PREFIX + "alias"] = record.alias
    if record.fallback is not None:
        headers[HEADER_PREFIX + "fallback"] = record.fallback
    if record.rule is not None:
        headers[HEADER_PREFIX + "rule"] = record.rule
    if record.attempts:
        headers[HEADER_PREFIX + "tried"] = ", ".join(f"{a.backend}/{a.model}:{a.outcome}" for a in record.attempts)
    if record.cost_usd is not None:
        headers[HEADER_PREFIX + "cost-usd"] = f"{record.cost_usd:.8f}"
    if record.latency_s is not None:
        headers[HEADER_PREFIX + "latency-ms"] = f"{record.latency_s * 1000:.1f}"
    return {k: v.encode("ascii", "replace").decode("ascii") for k, v in headers.items()}
