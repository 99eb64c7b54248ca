"""Routing rules: the config's ordered `rules:` list, matched against each call's facts.

The first rule whose `match` holds sets the call's routing choices (policy, constraints,
allowed backends, fallbacks, deadlines, retry, cache, hedging); a per-call hint still beats
each of them, and the rule beats the alias's own settings. Matching reads facts the request
path has already computed, so a call pays a few comparisons per rule, and the routes a rule
produces for an alias are built once and reused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from router.config.eligibility import RequestFacts
from router.config.schema import Constraints, RuleConfig, RuleSet, merge_retry

if TYPE_CHECKING:
    from router.config.routes import ModelRoute, RouteTable

_DAY = 24 * 60


def window_minutes(hours_utc: str) -> frozenset[int]:
    """The minutes of the day (UTC) inside an `HH:MM-HH:MM` window, which may wrap past midnight."""
    start_text, end_text = hours_utc.split("-")
    start = int(start_text[:2]) * 60 + int(start_text[3:])
    end = int(end_text[:2]) * 60 + int(end_text[3:])
    if start <= end:
        return frozenset(range(start, end))
    return frozenset(range(start, _DAY)) | frozenset(range(0, end))


ABSENT: frozenset[str] = frozenset()
"""The metadata condition `key: false`: the request's metadata must not have the key."""


def _values(value: str | list[str] | bool) -> frozenset[str] | None:
    """A metadata condition as the set of accepted values (None: any value; `ABSENT`: no such key)."""
    if value is True:
        return None
    if value is False:
        return ABSENT
    return frozenset((value,)) if isinstance(value, str) else frozenset(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule, compiled for matching: conditions as sets and bounds."""

    index: int
    name: str
    settings: RuleSet
    models: frozenset[str] | None
    tags: frozenset[str]
    metadata: tuple[tuple[str, frozenset[str] | None], ...]
    above: int | None
    below: int | None
    tools: bool | None
    response_format: bool | None
    stream: bool | None
    minutes: frozenset[int] | None

    @classmethod
    def compile(cls, index: int, config: RuleConfig) -> Rule:
        """Turn a configured rule into sets and bounds."""
        match = config.match
        models = match.model
        return cls(
            index=index,
            name=config.name or f"rules[{index}]",
            settings=config.settings,
            models=None if models is None else frozenset([models] if isinstance(models, str) else models),
            tags=frozenset(match.tags or ()),
            metadata=tuple((key, _values(value)) for key, value in (match.metadata or {}).items()),
            above=match.prompt_tokens_above,
            below=match.prompt_tokens_below,
            tools=match.tools,
            response_format=match.response_format,
            stream=match.stream,
            minutes=None if match.hours_utc is None else window_minutes(match.hours_utc),
        )

    def matches(
        self, model: str, tags: frozenset[str], metadata: Mapping[str, Any], facts: RequestFacts, body_has_format: bool
    ) -> bool:
        """Whether every condition holds for this call (the time window is checked by the caller)."""
        if self.models is not None and model not in self.models:
            return False
        if self.tags and not self.tags <= tags:
            return False
        for key, accepted in self.metadata:
            if accepted is ABSENT:
                if key in metadata:
                    return False
            elif key not in metadata or (accepted is not None and str(metadata[key]) not in accepted):
                return False
        if self.above is not None and facts.prompt_tokens <= self.above:
            return False
        if self.below is not None and facts.prompt_tokens >= self.below:
            return False
        if self.tools is not None and facts.uses_tools != self.tools:
            return False
        if self.response_format is not None and body_has_format != self.response_format:
            return False
        return self.stream is None or facts.stream == self.stream

    def covers(self, other: Rule) -> bool:
        """Whether this rule matches every call `other` matches (so a later `other` can never be reached)."""
        if self.models is not None and (other.models is None or not other.models <= self.models):
            return False
        if not self.tags <= other.tags:
            return False
        theirs = dict(other.metadata)
        for key, accepted in self.metadata:
            if key not in theirs:
                return False
            their = theirs[key]
            if (accepted is ABSENT) != (their is ABSENT):
                return False
            if accepted is not None and (their is None or not their <= accepted):
                return False
        if self.above is not None and (other.above is None or other.above < self.above):
            return False
        if self.below is not None and (other.below is None or other.below > self.below):
            return False
        for mine, its in ((self.tools, other.tools), (self.response_format, other.response_format)):
            if mine is not None and mine != its:
                return False
        if self.stream is not None and self.stream != other.stream:
            return False
        return self.minutes is None or (other.minutes is not None and other.minutes <= self.minutes)

    def never_matches(self) -> str | None:
        """Why no call can match this rule, if none can."""
        if self.above is not None and self.below is not None and self.below <= self.above + 1:
            return f"no prompt is above {self.above} and below {self.below} tokens"
        if self.minutes is not None and not self.minutes:
            return "the time window is empty"
        return None


class RuleBook:
    """The config's rules in order, and the routes each produces per alias (built on first use)."""

    def __init__(self, rules: list[RuleConfig]) -> None:
        self.rules = [Rule.compile(i, rule) for i, rule in enumerate(rules)]
        self._timed = any(rule.minutes is not None for rule in self.rules)
        self._routes: dict[tuple[int, str, int], ModelRoute] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(
        self, model: str, body: Mapping[str, Any], facts: RequestFacts, tags: tuple[str, ...], when: datetime
    ) -> Rule | None:
        """The first rule that matches this call, or None."""
        metadata = body.get("metadata")
        meta: Mapping[str, Any] = metadata if isinstance(metadata, Mapping) else {}
        tag_set = frozenset(tags)
        has_format = body.get("response_format") is not None
        minute = when.hour * 60 + when.minute if self._timed else 0
        for rule in self.rules:
            if rule.minutes is not None and minute not in rule.minutes:
                continue
            if rule.matches(model, tag_set, meta, facts, has_format):
                return rule
        return None

    def tiers(self, rule: Rule, table: RouteTable, model: str) -> list[ModelRoute]:
        """The alias and its fallbacks as this rule reshapes them (fallbacks, policy, constraints, …)."""
        settings = rule.settings
        tiers = table.resolve(model, fallbacks=settings.fallbacks)
        out = []
        for position, route in enumerate(tiers):
            key = (rule.index, route.name, position)
            applied = self._routes.get(key)
            if applied is None:
                applied = self._routes[key] = apply_settings(route, settings, first=position == 0)
            out.append(applied)
        return out


def apply_settings(route: ModelRoute, settings: RuleSet, *, first: bool) -> ModelRoute:
    """A route with a rule's choices over the alias's own (hints are applied later, per call)."""
    constraints = route.constraints
    if settings.constraints is not None:
        constraints = Constraints.model_validate(
            {**constraints.model_dump(), **settings.constraints.model_dump(exclude_none=True)}
        )
    hedge = route.hedge
    if first and settings.hedge is not None:
        hedge = None if settings.hedge is False else settings.hedge
    return replace(
        route,
        policy=settings.policy or route.policy,
        constraints=constraints,
        retry=merge_retry(route.retry, settings.retry),
        streams=settings.streams or route.streams,
        hedge=hedge,
        cache=settings.cache or route.cache,
        only=tuple(settings.only) if settings.only is not None else route.only,
        exclude=tuple(settings.exclude) if settings.exclude is not None else route.exclude,
    )
