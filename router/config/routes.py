"""The route table: the config turned into what the request path works with.

Aliases and bare model ids map to deployments; each deployment holds its adapter, time
limits, capabilities, context window and price. Built once per config; read on every call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime

from policies import Candidate, Price
from providers import PROVIDERS, OpenAICompatible
from providers.load import LoadReporter
from router.config.eligibility import Serves
from router.config.rules import RuleBook
from router.config.schema import (
    CacheOverride,
    CircuitConfig,
    Constraints,
    HedgePolicy,
    RetryPolicy,
    RouterConfig,
    StreamPolicy,
    Timeouts,
    merge_circuit,
    merge_retry,
    merge_timeouts,
)
from router.errors import unknown_model


@dataclass(slots=True)
class Deployment:
    """A candidate with the adapter that reaches it and everything the router knows of it."""

    candidate: Candidate
    adapter: OpenAICompatible
    timeouts: Timeouts
    serves: Serves
    price_fixed: bool
    """The price comes from config, not from the provider's (time-dependent) list."""
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    """When its circuit opens and how long it cools down: top level ← backend ← alias, field by field."""
    _price_hour: int = field(default=-1, repr=False)

    def candidate_at(self, when: datetime) -> Candidate:
        """The candidate with the price in effect at `when` (DeepSeek's off-peak hours), cached per hour."""
        if self.price_fixed:
            return self.candidate
        hour = int(when.timestamp() // 3600)
        if hour != self._price_hour:
            listed = self.adapter.price_at(self.candidate.model, when)
            price = (
                None
                if listed is None
                else Price(listed.input_per_mtok, listed.output_per_mtok, listed.cached_input_per_mtok)
            )
            self.candidate = replace(self.candidate, price=price)
            self._price_hour = hour
        return self.candidate


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """An alias (or a bare model id): its deployments, fallbacks and settings."""

    name: str
    deployments: tuple[Deployment, ...]
    fallbacks: tuple[str, ...]
    policy: str
    retry: RetryPolicy
    constraints: Constraints
    streams: StreamPolicy
    hedge: HedgePolicy | None = None
    cache: CacheOverride | None = None
    only: tuple[str, ...] = ()
    """Set by a rule: use only these backends, provider kinds or `backend/model` ids."""
    exclude: tuple[str, ...] = ()
    """Set by a rule: never use these."""


class RouteTable:
    """Step 1's data: aliases and model ids → deployments, built once from the config."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.adapters: dict[str, OpenAICompatible] = {}
        self.secrets: list[str] = []
        """The API keys the backends were given (from the config or the environment): for log redaction."""
        for name, backend in config.backends.items():
            cls = PROVIDERS[backend.provider]
            key = backend.api_key.get_secret_value() if backend.api_key is not None else None
            if key is None and cls.api_key_env:
                key = os.environ.get(cls.api_key_env)
            if key:
                self.secrets.append(key)
            self.adapters[name] = cls(base_url=backend.base_url, api_key=key, headers=backend.headers, name=name)
        self.routes: dict[str, ModelRoute] = {}
        by_model: dict[str, dict[str, Deployment]] = {}
        for alias, model in config.models.items():
            deployments = []
            for order, entry in enumerate(model.deployments):
                backend = config.backends[entry.backend]
                adapter = self.adapters[entry.backend]
                price = None
                if entry.price is not None:
                    p = entry.price
                    price = Price(p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok, p.per_hour)
                candidate = Candidate(
                    id=f"{entry.backend}/{entry.model}",
                    backend=entry.backend,
                    provider=backend.provider,
                    model=entry.model,
                    order=order,
                    weight=entry.weight,
                    price=price,
                    max_concurrency=entry.max_concurrency,
                    prior_ttft_s=entry.priors.ttft_s,
                    prior_tokens_per_s=entry.priors.tokens_per_s,
                )
                caps = entry.capabilities
                serves = Serves(
                    tools=caps.tools,
                    json_schema=caps.json_schema,
                    stream=caps.stream,
                    context_window=entry.context_window or adapter.context_window(entry.model),
                    prefill=adapter.supports_prefill if caps.prefill is None else caps.prefill,
                    endpoints=frozenset(entry.endpoints) if entry.endpoints is not None else adapter.endpoints,
                    response_state=adapter.keeps_response_state,
                )
                timeouts = merge_timeouts(config.timeouts, backend.timeouts, model.timeouts)
                circuit = merge_circuit(config.circuit, backend.circuit, model.circuit)
                deployment = Deployment(
                    candidate, adapter, timeouts, serves, price_fixed=price is not None, circuit=circuit
                )
                deployments.append(deployment)
                by_model.setdefault(entry.model, {}).setdefault(candidate.id, deployment)
            self.routes[alias] = ModelRoute(
                alias,
                tuple(deployments),
                tuple(model.fallbacks),
                model.policy or config.policy,
                merge_retry(config.retry, model.retry),
                model.constraints,
                model.streams or config.streams,
                model.hedge or config.hedge,
                model.cache,
            )
        self._by_id: dict[str, Deployment] = {}
        for route in self.routes.values():
            for d in route.deployments:
                self._by_id.setdefault(d.candidate.id, d)  # the first configured wins
        self.by_model_id = {
            model_id: ModelRoute(
                model_id, tuple(found.values()), (), config.policy, config.retry, Constraints(), config.streams
            )
            for model_id, found in by_model.items()
            if model_id not in self.routes
        }
        self.rules = RuleBook(config.rules)

    def resolve(self, model: str, *, fallbacks: list[str] | None = None) -> list[ModelRoute]:
        """The alias (or model id) asked for, then its fallbacks (or these, from a rule), breadth first, each once."""
        first = self.routes.get(model) or self.by_model_id.get(model)
        if first is None:
            raise unknown_model(model, list(self.routes))
        tiers, seen, queue = [], {first.name}, [first]
        while queue:
            route = queue.pop(0)
            tiers.append(route)
            names = fallbacks if route is first and fallbacks is not None else route.fallbacks
            for name in names:
                if name not in seen:
                    seen.add(name)
                    queue.append(self.routes[name])
        return tiers

    def deployment(self, candidate_id: str) -> Deployment | None:
        """The deployment with this `backend/model` id, wherever it is configured."""
        return self._by_id.get(candidate_id)

    def circuit_settings(self) -> dict[str, CircuitConfig]:
        """Each deployment's circuit settings by `backend/model` id (one circuit per id: the first
        alias that configures the id decides, as for `deployment()`)."""
        return {candidate_id: d.circuit for candidate_id, d in self._by_id.items()}

    def candidates_of(self, backend: str) -> list[str]:
        """The `backend/model` ids served by one backend (what a load probe of it speaks for)."""
        return [candidate_id for candidate_id, d in self._by_id.items() if d.candidate.backend == backend]

    def probe_targets(self) -> dict[str, LoadReporter]:
        """Backends whose servers report their own load (vLLM, llama.cpp), by backend name."""
        if not self.config.load_probes.enabled:
            return {}
        return {name: adapter for name, adapter in self.adapters.items() if isinstance(adapter, LoadReporter)}
