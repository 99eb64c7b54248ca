"""The configuration contract: the schema every config is validated against, and `ConfigError`.

Reading files (with line numbers) lives in `router/config/load.py`; the checks that need
compiled routes and rules (unknown names, unreachable or impossible rules) in `checks.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ProviderKind = Literal["deepseek", "groq", "cerebras", "vllm", "llamacpp", "openai"]
Path_ = tuple[str | int, ...]
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Per-attempt time limits, in seconds. See README "Timeouts" for what each bounds."""

    connect_s: float = Field(5.0, gt=0)
    first_token_s: float = Field(30.0, gt=0)
    stall_s: float = Field(30.0, gt=0)
    total_s: float = Field(300.0, gt=0)
    adaptive_first_token: bool = True
    """Once a deployment has samples, its first-token deadline is `adaptive_factor` × the
    `adaptive_percentile` of its recent TTFTs, between `adaptive_floor_s` and `first_token_s`."""
    adaptive_percentile: float = Field(0.95, gt=0, le=1)
    adaptive_factor: float = Field(3.0, ge=1)
    adaptive_floor_s: float = Field(2.0, gt=0)


class RetryPolicy(_Strict):
    """How hard to try one deployment before falling over, and one call in all."""

    attempts_per_deployment: int = Field(2, ge=1)
    max_attempts: int = Field(8, ge=1)
    backoff_initial_s: float = Field(0.25, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)
    max_retry_after_s: float = Field(30.0, ge=0)
    content_filter: Literal["surface", "fall_over"] = "surface"
    """A content-filter refusal: surface the provider's reason at once, or try the next candidate."""


class StreamPolicy(_Strict):
    """How streams commit and what happens when one breaks after the caller has seen part of it."""

    commit: Literal["first_token", "buffer"] = "first_token"
    """`first_token`: pass chunks on from the first token (failures before it fall over invisibly);
    `buffer`: receive and check the whole answer before the caller sees any of it."""
    recover: Literal["none", "continue"] = "none"
    """`continue`: after a break, ask the next candidate that supports prefill to continue the answer."""


class HedgePolicy(_Strict):
    """Opt-in hedging: if no first token after the delay, send a duplicate to the next candidate."""

    after_s: float | None = Field(None, gt=0)
    """Fixed delay before the duplicate."""
    after_percentile: float | None = Field(None, gt=0, lt=1)
    """Delay = this percentile of the first candidate's recent TTFT (`after_s` until it has samples)."""
    max_extra_fraction: float = Field(0.1, gt=0, le=1)
    """Duplicates never exceed this share of calls."""

    @model_validator(mode="after")
    def _has_a_delay(self) -> HedgePolicy:
        if self.after_s is None and self.after_percentile is None:
            raise ValueError("hedge needs after_s, after_percentile, or both")
        return self


class TimeoutsOverride(_Strict):
    """Only the fields given replace the inherited timeouts."""

    connect_s: float | None = Field(None, gt=0)
    first_token_s: float | None = Field(None, gt=0)
    stall_s: float | None = Field(None, gt=0)
    total_s: float | None = Field(None, gt=0)
    adaptive_first_token: bool | None = None
    adaptive_percentile: float | None = Field(None, gt=0, le=1)
    adaptive_factor: float | None = Field(None, ge=1)
    adaptive_floor_s: float | None = Field(None, gt=0)


class RetryOverride(_Strict):
    """Only the fields given replace the inherited retry settings."""

    attempts_per_deployment: int | None = Field(None, ge=1)
    max_attempts: int | None = Field(None, ge=1)
    backoff_initial_s: float | None = Field(None, ge=0)
    backoff_max_s: float | None = Field(None, ge=0)
    max_retry_after_s: float | None = Field(None, ge=0)
    content_filter: Literal["surface", "fall_over"] | None = None


class BackendConfig(_Strict):
    """One account or server: which provider kind, where, with which key."""

    provider: ProviderKind
    base_url: str | None = None
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: TimeoutsOverride | None = None
    circuit: CircuitOverride | None = None
    """Over the top-level `circuit`, field by field (an alias's `circuit` beats this)."""


class PriceConfig(_Strict):
    """USD per million tokens (hosted), or per hour of the machine (self-hosted)."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)
    per_hour: float | None = Field(None, ge=0)


class Capabilities(_Strict):
    """What a deployment can serve; a request that needs more skips it."""

    tools: bool = True
    json_schema: bool = True
    stream: bool = True
    prefill: bool | None = None
    """Can continue an assistant message (for `streams.recover: continue`); None: the provider's default
    (DeepSeek, vLLM and llama.cpp can; Groq, Cerebras and plain OpenAI endpoints are not assumed to)."""


class Priors(_Strict):
    """Expected speed before the router has measured any: used by `fastest` and the cost of per-hour prices."""

    ttft_s: float | None = Field(None, gt=0)
    tokens_per_s: float | None = Field(None, gt=0)


class DeploymentConfig(_Strict):
    """A model id served by a backend, and what the router should know of it."""

    backend: str
    model: str
    weight: float = Field(1.0, gt=0)
    price: PriceConfig | None = None
    """Overrides the provider's published price (required for a cost on self-hosted backends)."""
    context_window: int | None = Field(None, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    capabilities: Capabilities = Field(default_factory=Capabilities)
    priors: Priors = Field(default_factory=Priors)
    endpoints: list[Literal["chat", "completions", "embeddings", "responses"]] | None = Field(None, min_length=1)
    """The endpoints this deployment serves, when not what its provider kind serves (README "Endpoints"):
    e.g. `[embeddings]` for a vLLM or llama.cpp server running an embedding model."""


class Constraints(_Strict):
    """Limits any policy must respect; per alias in config, or per call in `route=` hints."""

    max_cost_usd: float | None = Field(None, ge=0)
    max_ttft_s: float | None = Field(None, gt=0)
    max_input_per_mtok: float | None = Field(None, ge=0)
    max_output_per_mtok: float | None = Field(None, ge=0)


class CircuitConfig(_Strict):
    """When a deployment's circuit opens and how long it stays open (`router/path/circuit.py`).

    See README "Circuit breaking" for why these defaults: a few seconds of cooldown at most, so a
    recovered deployment is back in use within seconds even when calls are rare."""

    failures: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(30.0, gt=0)
    min_requests: int = Field(10, ge=1)
    cooldown_s: float = Field(1.0, gt=0)
    """The first opening's cooldown; each failed probe doubles it, up to `max_cooldown_s`."""
    max_cooldown_s: float = Field(5.0, gt=0)
    """The cap of the doubling; never below `cooldown_s` (a larger `cooldown_s` alone means no doubling)."""
    jitter: float = Field(0.2, ge=0, lt=1)
    """Each cooldown is shortened by a random share of at most this, so processes don't probe in step."""

    @model_validator(mode="after")
    def _cap_above_start(self) -> CircuitConfig:
        return _cap_check(self)


class CircuitOverride(_Strict):
    """A backend's or an alias's circuit settings: only the fields given replace the inherited ones."""

    failures: int | None = Field(None, ge=1)
    error_rate: float | None = Field(None, gt=0, le=1)
    window_s: float | None = Field(None, gt=0)
    min_requests: int | None = Field(None, ge=1)
    cooldown_s: float | None = Field(None, gt=0)
    max_cooldown_s: float | None = Field(None, gt=0)
    jitter: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _cap_above_start(self) -> CircuitOverride:
        return _cap_check(self)


_Circuit = TypeVar("_Circuit", CircuitConfig, CircuitOverride)


def _cap_check(circuit: _Circuit) -> _Circuit:
    """Both given, the cap must not be below the start (one given alone can't contradict the other)."""
    cap, start = circuit.max_cooldown_s, circuit.cooldown_s
    both = {"cooldown_s", "max_cooldown_s"} <= circuit.model_fields_set
    if both and cap is not None and start is not None and cap < start:
        raise ValueError(f"max_cooldown_s ({cap:g}) is below cooldown_s ({start:g})")
    return circuit


class CacheConfig(_Strict):
    """The response cache (`router/cache/`): where, how long, and which requests."""

    backend: Literal["memory", "sqlite", "redis"] = "memory"
    ttl_s: float = Field(3600.0, gt=0)
    path: str | None = None
    """The SQLite file (backend `sqlite`)."""
    url: str | None = None
    """The Redis URL (backend `redis`), e.g. `redis://127.0.0.1:6379/0`."""
    namespace: str = ""
    """Separates tenants sharing one store."""
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(256 * 1024 * 1024, ge=1)
    cacheable: Literal["deterministic", "all"] = "deterministic"
    """`deterministic`: only requests with `temperature: 0` or a `seed`; `all`: every request."""
    lock_wait_s: float = Field(30.0, gt=0)
    """How long identical concurrent requests wait for the one upstream call (single-flight)."""


class CacheOverride(_Strict):
    """An alias's cache settings, over the router's."""

    enabled: bool = True
    ttl_s: float | None = Field(None, gt=0)
    cacheable: Literal["deterministic", "all"] | None = None


class StateConfig(_Strict):
    """Where live state lives: this process (`memory`), or Redis shared by every process (`redis`)."""

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    namespace: str = ""
    refresh_s: float = Field(0.25, gt=0)
    """How often shared circuit openings are published and read back."""


class LoadProbes(_Strict):
    """Background polling of vLLM and llama.cpp load endpoints while the router is open."""

    enabled: bool = True
    interval_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)


class UsageConfig(_Strict):
    """Cost and usage accounting (`router.usage()`); with a `path`, also kept in a SQLite file."""

    path: str | None = None
    """A SQLite file the totals are added to, so `inference-router usage --since 1d` sees every run."""
    flush_s: float = Field(5.0, gt=0)
    """How often pending totals are written to the file (and always when the router closes)."""


class TelemetryConfig(_Strict):
    """Tracing and metrics exporters (optional extras `otel` and `prometheus`)."""

    otel: Literal["auto", "on", "off"] = "auto"
    """OpenTelemetry spans per call and attempt: `auto` when `opentelemetry-api` is installed."""
    prometheus: bool = False
    """Prometheus metrics in `router.metrics` (needs `prometheus-client`)."""
    prometheus_port: int | None = Field(None, ge=0, le=65535)
    """Also serve them over HTTP on this port (`/metrics`)."""


def _long_secret(value: SecretStr) -> SecretStr:
    """A gateway secret must not be guessable: 16 characters at least."""
    if len(value.get_secret_value()) < 16:
        raise ValueError("a gateway secret must be at least 16 characters (set it from an environment variable)")
    return value


class GatewayKey(_Strict):
    """One caller of the gateway (`inference-router serve`): its secret, what it may ask for, its limits."""

    secret: SecretStr
    """The bearer token callers send (`Authorization: Bearer …`); write `${ENV_VAR}`, never the secret itself."""

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        return _long_secret(value)

    models: list[str] | None = Field(None, min_length=1)
    """The aliases this key may call (None: every one)."""
    rpm: int | None = Field(None, ge=1)
    """Requests per minute."""
    tpm: int | None = Field(None, ge=1)
    """Tokens (prompt + completion) per minute; a call that starts under the limit runs to its end."""
    daily_usd: float | None = Field(None, ge=0)
    """Spend per UTC day, in USD (route records' `cost_usd`)."""
    monthly_usd: float | None = Field(None, ge=0)
    """Spend per UTC calendar month, in USD."""
    tags: list[str] = Field(default_factory=list)
    """Added to every call's tags (usage by tag); the key's own tag `key:NAME` is always added."""


class GatewayConfig(_Strict):
    """The HTTP gateway (`inference-router serve`): where it listens, who may call it, how much it takes."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    """Worker processes, each with its own router; with `state: {backend: redis}` they act as one."""
    keys: dict[str, GatewayKey] = Field(default_factory=dict)
    """Named keys; none: the gateway is open to anyone who can reach it (bind it to loopback)."""
    admin_key: SecretStr | None = None
    """Guards `/admin/*` (deployment health, usage, reload); without it they are off."""

    @field_validator("admin_key")
    @classmethod
    def _admin_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _long_secret(value)

    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Larger request bodies get 413."""
    body_timeout_s: float = Field(30.0, gt=0)
    """A request body must arrive within this, or the caller gets 408 (slow clients cannot hold a worker)."""
    keep_alive_s: float = Field(5.0, gt=0)
    """Idle keep-alive connections are closed after this."""
    max_connections: int | None = Field(None, ge=1)
    """Per worker: API requests beyond this many in flight get a 503 in OpenAI's shape (`Retry-After: 1`)
    at once; connections beyond twice as many (+16) are refused by the HTTP server itself."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM, requests in flight (streams included) get this long to finish."""
    watch: bool = True
    """Reload the config when its file changes (SIGHUP reloads too)."""


class ModelConfig(_Strict):
    """An alias callers ask for: where it is served, and what to try when all of that fails."""

    deployments: list[DeploymentConfig] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    policy: str | None = None
    constraints: Constraints = Field(default_factory=Constraints)
    timeouts: TimeoutsOverride | None = None
    retry: RetryOverride | None = None
    streams: StreamPolicy | None = None
    hedge: HedgePolicy | None = None
    cache: CacheOverride | None = None
    circuit: CircuitOverride | None = None
    """Over the backend's and the top-level `circuit`, field by field, for this alias's deployments."""


class RuleMatch(_Strict):
    """Facts of a request a rule looks at; every condition given must hold (none given: every call)."""

    model: str | list[str] | None = None
    """The alias (or model id) asked for, or any of a list."""
    tags: list[str] | None = None
    """Every one of these tags is among the call's `route={"tags": [...]}`."""
    metadata: dict[str, str | list[str] | bool] | None = None
    """The request's `metadata` has each key: equal to the string, one of the (non-empty) list, or (`true`)
    with any value; `false`: the key is absent."""

    @field_validator("metadata")
    @classmethod
    def _no_empty_lists(
        cls, value: dict[str, str | list[str] | bool] | None
    ) -> dict[str, str | list[str] | bool] | None:
        for key, accepted in (value or {}).items():
            if isinstance(accepted, list) and not accepted:
                raise ValueError(f"metadata.{key}: an empty list matches nothing; use `false` for an absent key")
        return value

    prompt_tokens_above: int | None = Field(None, ge=0)
    """The estimated prompt is longer than this many tokens."""
    prompt_tokens_below: int | None = Field(None, gt=0)
    """The estimated prompt is shorter than this many tokens."""
    tools: bool | None = None
    """The request uses tools (true) or not (false)."""
    response_format: bool | None = None
    """The request sets `response_format` (true) or not (false)."""
    stream: bool | None = None
    hours_utc: str | None = None
    """A UTC time window, `HH:MM-HH:MM`; it may wrap past midnight (`22:00-06:00`)."""

    @field_validator("hours_utc")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and not _HOURS.match(value.replace(" ", "")):
            raise ValueError("expected a UTC window `HH:MM-HH:MM`, e.g. `16:30-00:30`")
        return None if value is None else value.replace(" ", "")


class RuleSet(_Strict):
    """The routing choices a matching rule makes; a per-call hint still beats each of them."""

    policy: str | None = None
    constraints: Constraints | None = None
    """Field by field over the alias's constraints."""
    only: list[str] | None = None
    """Use only these backends, provider kinds or `backend/model` ids."""
    exclude: list[str] | None = None
    """Never use these backends, provider kinds or `backend/model` ids."""
    fallbacks: list[str] | None = None
    """Replace the alias's fallback aliases."""
    deadline_s: float | None = Field(None, gt=0)
    """Give up on the whole call after this many seconds."""
    timeouts: TimeoutsOverride | None = None
    retry: RetryOverride | None = None
    cache: CacheOverride | None = None
    hedge: HedgePolicy | Literal[False] | None = None
    """Hedging settings, or `false` to turn the alias's hedging off."""
    streams: StreamPolicy | None = None


class RuleConfig(_Strict):
    """One routing rule: when its `match` holds for a call, its `set` applies (the first such rule wins)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = None
    """Named in route records and `explain`; defaults to `rules[i]`."""
    match: RuleMatch = Field(default_factory=RuleMatch)
    settings: RuleSet = Field(alias="set")


class RouterConfig(_Strict):
    """The whole configuration file."""

    backends: dict[str, BackendConfig]
    models: dict[str, ModelConfig]
    policy: str = "ordered"
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    load_probes: LoadProbes = Field(default_factory=LoadProbes)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    streams: StreamPolicy = Field(default_factory=StreamPolicy)
    hedge: HedgePolicy | None = None
    cache: CacheConfig | None = None
    """Off unless given."""
    state: StateConfig = Field(default_factory=StateConfig)
    rules: list[RuleConfig] = Field(default_factory=list)
    """Routing rules, in order: the first whose `match` holds sets the call's routing choices."""
    usage: UsageConfig = Field(default_factory=UsageConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    """`inference-router serve` only; the SDK ignores it."""


_Settings = TypeVar("_Settings", bound=BaseModel)


def merge_fields(base: _Settings, *overrides: BaseModel | None) -> _Settings:
    """Apply overrides in order; later ones win field by field (a field left out or None inherits)."""
    for override in overrides:
        if override is not None:
            base = base.model_copy(update=override.model_dump(exclude_none=True))
    return base


def merge_timeouts(base: Timeouts, *overrides: TimeoutsOverride | None) -> Timeouts:
    """Apply overrides in order; later ones win field by field."""
    return merge_fields(base, *overrides)


def merge_retry(base: RetryPolicy, override: RetryOverride | None) -> RetryPolicy:
    """Apply an alias's retry override to the router's."""
    return merge_fields(base, override)


def merge_circuit(base: CircuitConfig, *overrides: CircuitOverride | None) -> CircuitConfig:
    """A deployment's circuit: the top level, then its backend's, then its alias's, field by field."""
    return merge_fields(base, *overrides)


# --- errors that point at the file -------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where (file, line, field path) and what."""

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ValueError):
    """The configuration is invalid; `.issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        super().__init__(f"invalid router config ({count}):\n" + "\n".join(f"  {i}" for i in issues))


def format_path(path: Path_) -> str:
    """`("models", "chat", "deployments", 0, "backend")` → `models.chat.deployments[0].backend`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
