"""The checks a config needs beyond its schema: names that must refer to something, and rules
that can never match, are shadowed by an earlier rule, or leave no deployment able to serve."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from policies import DeploymentStats, known_policies
from providers import PROVIDERS
from router.config.eligibility import Limits, RequestFacts, exclusion_reason
from router.config.routes import ModelRoute, RouteTable
from router.config.rules import Rule, apply_settings
from router.config.schema import Path_, RouterConfig, RuleConfig


def cross_references(raw: dict[str, Any]) -> list[tuple[Path_, str]]:
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
    return problems + _circuit_conflicts(raw, backends, models) + _gateway_keys(raw, models)


def _circuit_conflicts(
    raw: dict[str, Any], backends: dict[str, Any], models: dict[str, Any]
) -> list[tuple[Path_, str]]:
    """A deployment (`backend/model`) has one circuit, whichever aliases list it: two aliases that would
    give it different settings (top ← backend ← alias, field by field) are a mistake to name, not a
    silent first-alias-wins."""

    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    top = mapping(raw.get("circuit"))
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    problems: list[tuple[Path_, str]] = []
    for alias, model in models.items():
        if not isinstance(model, dict):
            continue
        own = mapping(model.get("circuit"))
        for deployment in model["deployments"] if isinstance(model.get("deployments"), list) else []:
            backend, name = mapping(deployment).get("backend"), mapping(deployment).get("model")
            if not isinstance(backend, str) or not isinstance(name, str):
                continue
            settings = {**top, **mapping(mapping(backends.get(backend)).get("circuit")), **own}
            candidate_id = f"{backend}/{name}"
            earlier, theirs = first.setdefault(candidate_id, (alias, settings))
            if earlier != alias and theirs != settings:
                differ = sorted(k for k in {*settings, *theirs} if settings.get(k) != theirs.get(k))
                problems.append(
                    (
                        ("models", alias, "circuit") if own else ("models", alias),
                        f"deployment {candidate_id} has one circuit, and models.{earlier} gives it other settings "
                        f"({', '.join(differ)}): set them on backends.{backend}.circuit, or the same in both aliases",
                    )
                )
    return problems


def _gateway_keys(raw: dict[str, Any], models: dict[str, Any]) -> list[tuple[Path_, str]]:
    """Each gateway key's allowed models must be configured aliases."""
    gateway = raw.get("gateway")
    keys = gateway.get("keys") if isinstance(gateway, dict) else None
    problems: list[tuple[Path_, str]] = []
    for name, key in keys.items() if isinstance(keys, dict) else ():
        allowed = key.get("models") if isinstance(key, dict) else None
        for i, alias in enumerate(allowed if isinstance(allowed, list) else ()):
            if isinstance(alias, str) and alias not in models:
                problems.append(
                    (("gateway", "keys", name, "models", i), f"unknown model {alias!r}; known: {', '.join(models)}")
                )
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


def rule_problems(raw: dict[str, Any], line_of: Callable[[Path_], int | None]) -> list[tuple[Path_, str]]:
    """The rules' references (aliases, backends, policies), rules no call can reach, and rules or
    alias constraints no deployment can satisfy. Each rule is checked on its own, so one broken
    rule doesn't hide the others' problems."""
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
    return RequestFacts(
        prompt_tokens=(rule.above + 1) if rule.above is not None else 0,
        max_output_tokens=1,
        uses_tools=rule.tools is True,
        uses_json_schema=False,
        stream=rule.stream is True,
    )
