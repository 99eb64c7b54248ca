"""The configuration contract: schema, loading from YAML/TOML/dicts, and errors that point home.

A bad config raises `ConfigError` listing every problem at once, each with the file, the line
and the field's path (`router.yaml:12: models.chat.deployments[0].backend: unknown backend`).
`${VAR}` and `${VAR:-default}` in strings are replaced from the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from policies import known_policies
from providers import PROVIDERS

ProviderKind = Literal["deepseek", "groq", "cerebras", "vllm", "llamacpp", "openai"]
Path_ = tuple[str | int, ...]
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
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


class Constraints(_Strict):
    """Limits any policy must respect; per alias in config, or per call in `route=` hints."""

    max_cost_usd: float | None = Field(None, ge=0)
    max_ttft_s: float | None = Field(None, gt=0)
    max_input_per_mtok: float | None = Field(None, ge=0)
    max_output_per_mtok: float | None = Field(None, ge=0)


class CircuitConfig(_Strict):
    """When a deployment's circuit opens and how long it stays open (`router/circuit.py`)."""

    failures: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(30.0, gt=0)
    min_requests: int = Field(10, ge=1)
    cooldown_s: float = Field(5.0, gt=0)
    max_cooldown_s: float = Field(120.0, gt=0)


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


def merge_timeouts(base: Timeouts, *overrides: TimeoutsOverride | None) -> Timeouts:
    """Apply overrides in order; later ones win field by field."""
    for override in overrides:
        if override is not None:
            base = base.model_copy(update=override.model_dump(exclude_none=True))
    return base


def merge_retry(base: RetryPolicy, override: RetryOverride | None) -> RetryPolicy:
    """Apply an alias's retry override to the router's."""
    return base if override is None else base.model_copy(update=override.model_dump(exclude_none=True))


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


# --- reading files with line numbers -----------------------------------------------------


def _yaml_with_lines(text: str, lines: dict[Path_, int]) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()

        def build(node: yaml.Node, path: Path_) -> Any:
            lines.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)
                out: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    key = loader.construct_object(key_node)
                    lines[(*path, key)] = key_node.start_mark.line + 1
                    out[key] = build(value_node, (*path, key))
                return out
            if isinstance(node, yaml.SequenceNode):
                return [build(item, (*path, i)) for i, item in enumerate(node.value)]
            return loader.construct_object(node)

        return None if node is None else build(node, ())
    finally:
        loader.dispose()


def _toml_lines(text: str, data: Any, lines: dict[Path_, int]) -> None:
    """Best-effort line numbers for TOML (tomllib keeps none): find each key under its table."""
    source = text.splitlines()
    table: Path_ = ()
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*$")
    key_line = re.compile(r'^\s*("?[^"=\s]+"?(?:\s*\.\s*"?[^"=\s]+"?)*)\s*=')
    counts: dict[Path_, int] = {}
    for number, line in enumerate(source, start=1):
        if m := header.match(line):
            table = tuple(p.strip().strip('"') for p in m.group(2).split("."))
            lines.setdefault(table, number)
            if m.group(1) == "[[":  # an array of tables: `[[rules]]` is rules[0], then rules[1], …
                index = counts[table] = counts.get(table, -1) + 1
                table = (*table, index)
                lines.setdefault(table, number)
        elif m := key_line.match(line):
            key = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            lines.setdefault((*table, *key), number)


def _interpolate(value: Any, path: Path_, env: Mapping[str, str], issues: list[tuple[Path_, str]]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), env, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), env, issues) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            issues.append((path, f"environment variable {name} is not set"))
            return ""

        return _ENV_REF.sub(replace, value)
    return value


def _line_for(path: Path_, lines: Mapping[Path_, int]) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> RouterConfig:
    """Read and validate a config from a YAML/TOML file path or a mapping; raise ConfigError."""
    env = os.environ if env is None else env
    lines: dict[Path_, int] = {}
    if isinstance(source, Mapping):
        name, raw = "<config>", dict(source)
    else:
        path = Path(source)
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([ConfigIssue(name, None, "", f"cannot read the file: {exc.strerror or exc}")]) from None
        try:
            if path.suffix.lower() == ".toml":
                raw = tomllib.loads(text)
                _toml_lines(text, raw, lines)
            else:
                raw = _yaml_with_lines(text, lines)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else None
            raise ConfigError([ConfigIssue(name, line, "", f"not valid YAML: {exc.problem}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([ConfigIssue(name, None, "", f"not valid TOML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue(name, 1, "", "the config must be a mapping with `backends` and `models`")])

    problems: list[tuple[Path_, str]] = []
    raw = _interpolate(raw, (), env, problems)
    config: RouterConfig | None = None
    try:
        config = RouterConfig.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc: Path_ = tuple(error["loc"])
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            elif error["type"] == "value_error":
                message = message.removeprefix("Value error, ")
            elif error["type"] == "literal_error" and loc and loc[-1] == "provider":
                message = f"unknown provider {error.get('input')!r}; known: {', '.join(PROVIDERS)}"
            problems.append((loc, message))
    problems.extend(_cross_references(raw))
    problems.extend(_rule_problems(raw, lambda path: _line_for(path, lines)))
    if problems:
        issues = [ConfigIssue(name, _line_for(p, lines), format_path(p), m) for p, m in problems]
        raise ConfigError(sorted(issues, key=lambda i: (i.line or 0, i.path)))
    assert config is not None
    return config


def _cross_references(raw: dict[str, Any]) -> list[tuple[Path_, str]]:
    """Names that must refer to something: backends, fallback aliases, policies, base URLs.

    Reads the raw mapping so these are reported together with schema errors, not after them.
    """
    backends, models = _sections(raw)
    problems = _unknown_policy(("policy",), raw.get("policy"))
    for name, backend in backends.items():
        kind = backend.get("provider") if isinstance(backend, dict) else None
        if kind in PROVIDERS and not backend.get("base_url") and PROVIDERS[kind].default_base_url is None:
            problems.append((("backends", name, "base_url"), f"provider {backend['provider']!r} needs a base_url"))
    for alias, model in models.items():
        if not isinstance(model, dict):
            continue
        deployments: list[Any] = model["deployments"] if isinstance(model.get("deployments"), list) else []
        for i, deployment in enumerate(deployments):
            backend = deployment.get("backend") if isinstance(deployment, dict) else None
            if isinstance(backend, str) and backend not in backends:
                problems.append(
                    (
                        ("models", alias, "deployments", i, "backend"),
                        f"unknown backend {backend!r}; known: {', '.join(backends) or 'none'}",
                    )
                )
        fallbacks: list[Any] = model["fallbacks"] if isinstance(model.get("fallbacks"), list) else []
        for i, fallback in enumerate(fallbacks):
            if fallback == alias:
                problems.append((("models", alias, "fallbacks", i), "a model cannot fall back to itself"))
            elif isinstance(fallback, str) and fallback not in models:
                problems.append(
                    (("models", alias, "fallbacks", i), f"unknown model {fallback!r}; known: {', '.join(models)}")
                )
        problems += _unknown_policy(("models", alias, "policy"), model.get("policy"))
    return problems


def _sections(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw `backends` and `models` mappings (empty when missing or malformed: the schema says so)."""
    backends = raw["backends"] if isinstance(raw.get("backends"), dict) else {}
    models = raw["models"] if isinstance(raw.get("models"), dict) else {}
    return backends, models


def _unknown_policy(path: Path_, value: Any) -> list[tuple[Path_, str]]:
    """The problem with a `policy` value that names no registered policy, if it doesn't."""
    policies = known_policies()
    if isinstance(value, str) and value not in policies:
        return [(path, f"unknown policy {value!r}; known: {', '.join(policies)}")]
    return []


def _rule_problems(raw: dict[str, Any], line_of: Callable[[Path_], int | None]) -> list[tuple[Path_, str]]:
    """The rules' references (aliases, backends, policies), rules no call can reach, and rules or
    alias constraints no deployment can satisfy. Each rule is checked on its own, so one broken
    rule doesn't hide the others' problems."""
    from router.rules import Rule

    problems: list[tuple[Path_, str]] = []
    rules_raw = raw.get("rules")
    if not isinstance(rules_raw, list):
        return problems
    backends, models = _sections(raw)
    served = [
        (d.get("backend"), d.get("model"))
        for m in models.values()
        if isinstance(m, dict) and isinstance(m.get("deployments"), list)
        for d in m["deployments"]
        if isinstance(d, dict)
    ]
    model_ids = {model for _, model in served}
    deployment_ids = {f"{backend}/{model}" for backend, model in served}
    kinds = {b.get("provider") for b in backends.values() if isinstance(b, dict)}
    compiled: list[tuple[int, Rule]] = []
    for i, rule_raw in enumerate(rules_raw):
        here: Path_ = ("rules", i)
        if not isinstance(rule_raw, dict):
            continue
        match: dict[str, Any] = rule_raw["match"] if isinstance(rule_raw.get("match"), dict) else {}
        settings: dict[str, Any] = rule_raw["set"] if isinstance(rule_raw.get("set"), dict) else {}
        asked = match.get("model")
        for j, name in enumerate([asked] if isinstance(asked, str) else asked if isinstance(asked, list) else []):
            if isinstance(name, str) and name not in models and name not in model_ids:
                where = (*here, "match", "model") + ((j,) if isinstance(asked, list) else ())
                problems.append((where, f"unknown model {name!r}; known: {', '.join(models) or 'none'}"))
        problems += _unknown_policy((*here, "set", "policy"), settings.get("policy"))
        fallbacks = settings.get("fallbacks")
        for j, name in enumerate(fallbacks if isinstance(fallbacks, list) else []):
            if isinstance(name, str) and name not in models:
                problems.append(
                    ((*here, "set", "fallbacks", j), f"unknown model {name!r}; known: {', '.join(models) or 'none'}")
                )
        for field_name in ("only", "exclude"):
            names = settings.get(field_name)
            for j, name in enumerate(names if isinstance(names, list) else []):
                if isinstance(name, str) and name not in backends and name not in kinds and name not in deployment_ids:
                    problems.append(
                        (
                            (*here, "set", field_name, j),
                            f"unknown backend {name!r}; known backends: {', '.join(backends) or 'none'}"
                            f" (or a provider kind in use, or a `backend/model` id)",
                        )
                    )
        try:
            known_keys = {k: v for k, v in rule_raw.items() if k in ("name", "match", "set")}
            rule = Rule.compile(i, RuleConfig.model_validate(known_keys))
        except ValidationError:
            continue  # reported by the schema check
        if (why := rule.never_matches()) is not None:
            problems.append(((*here, "match"), f"this rule can never match: {why}"))
        for j, earlier in compiled:
            if earlier.covers(rule):
                line = line_of(("rules", j))
                at = f" (line {line})" if line else ""
                problems.append((here, f"unreachable: rule {earlier.name!r}{at} matches every call this one does"))
                break
        compiled.append((i, rule))
    problems.extend(_impossible(raw, compiled))
    return problems


def _impossible(raw: dict[str, Any], rules: list[tuple[int, Any]]) -> list[tuple[Path_, str]]:
    """Alias constraints and rules that leave no deployment able to serve, at any hour (checked when the
    backends and models themselves are valid)."""
    from datetime import UTC, datetime, timedelta

    from policies import DeploymentStats
    from router.eligibility import Limits, RequestFacts, exclusion_reason
    from router.routes import ModelRoute, RouteTable
    from router.rules import apply_settings

    try:
        base = RouterConfig.model_validate({"backends": raw.get("backends"), "models": raw.get("models")})
    except ValidationError:
        return []
    table = RouteTable(base)
    plain = RequestFacts(prompt_tokens=0, max_output_tokens=1, uses_tools=False, uses_json_schema=False, stream=False)
    midnight = datetime(2026, 1, 1, tzinfo=UTC)
    day = [midnight + timedelta(minutes=30 * k) for k in range(48)]  # prices change on the half hour at most
    nobody: dict[str, DeploymentStats] = {}  # no stats: judged on config and list prices alone

    why_not: dict[str, str] = {}
    """The last reason each deployment was found unable to serve, for the messages."""

    def servable(route: ModelRoute, facts: RequestFacts = plain) -> bool:
        c = route.constraints
        limits = Limits(
            max_input_per_mtok=c.max_input_per_mtok,
            max_output_per_mtok=c.max_output_per_mtok,
            only=route.only,
            exclude=route.exclude,
        )
        for d in route.deployments:
            reasons = [exclusion_reason(d.candidate_at(when), d.serves, facts, limits, nobody) for when in day]
            if None in reasons:
                return True
            why_not[d.candidate.id] = str(reasons[-1])
        return False

    problems: list[tuple[Path_, str]] = []
    for alias, route in table.routes.items():
        c = route.constraints
        if (c.max_input_per_mtok is not None or c.max_output_per_mtok is not None) and not servable(route):
            problems.append(
                (("models", alias, "constraints"), "no deployment of this model meets these price caps at any hour")
            )
    for i, rule in rules:
        settings = rule.settings
        narrows = (settings.only, settings.exclude, settings.constraints, settings.fallbacks)
        if all(v is None for v in narrows) and not (rule.tools or rule.stream or rule.above):
            continue  # leaves the candidates as the alias has them (checked above)
        targets = sorted(rule.models) if rule.models is not None else list(table.routes)
        dead: list[str] = []
        reasons: dict[str, str] = {}
        for name in targets:
            try:
                tiers = table.resolve(name, fallbacks=settings.fallbacks)
            except Exception:
                continue  # an unknown name: reported above
            applied = [apply_settings(route, settings, first=k == 0) for k, route in enumerate(tiers)]
            why_not.clear()
            if not any(servable(route, _least_request(rule)) for route in applied):
                dead.append(name)
                reasons.update(why_not)
        if dead and (rule.models is not None or len(dead) == len(targets)):
            field_name = next((f for f in ("only", "exclude", "constraints") if getattr(settings, f) is not None), "")
            path: Path_ = ("rules", i, "set", field_name) if field_name else ("rules", i, "set")
            problems.append(
                (
                    path,
                    f"impossible: no deployment of {', '.join(map(repr, dead))} can serve under this rule"
                    f" ({'; '.join(f'{d}: {r}' for d, r in reasons.items())})",
                )
            )
    return problems


def _least_request(rule: Any) -> Any:
    """The smallest request a rule can match: what it must use (tools, streaming) and its prompt floor."""
    from router.eligibility import RequestFacts

    return RequestFacts(
        prompt_tokens=(rule.above + 1) if rule.above is not None else 0,
        max_output_tokens=1,
        uses_tools=rule.tools is True,
        uses_json_schema=False,
        stream=rule.stream is True,
    )
