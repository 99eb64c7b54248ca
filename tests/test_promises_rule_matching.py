"""README "Routing rules", the `match` conditions at their edges: prompt-size bounds are strict, the
UTC window is half-open and may wrap midnight, and the unreachable/impossible checks judge
bounds and windows exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from router.config.eligibility import RequestFacts
from router.config.rules import Rule, RuleBook, window_minutes
from router.config.schema import RuleConfig


def rule(index: int = 0, **match: Any) -> Rule:
    return Rule.compile(index, RuleConfig.model_validate({"match": match, "set": {"policy": "cheapest"}}))


def facts(prompt: int = 100) -> RequestFacts:
    return RequestFacts(
        prompt_tokens=prompt, max_output_tokens=None, uses_tools=False, uses_json_schema=False, stream=False
    )


def test_prompt_bounds_are_strict() -> None:
    """`prompt_tokens_above: 100` wants more than 100; `prompt_tokens_below: 200` fewer than 200."""
    between = rule(prompt_tokens_above=100, prompt_tokens_below=200)
    assert [between.matches("m", frozenset(), {}, facts(n), False) for n in (100, 101, 199, 200)] == [
        False,
        True,
        True,
        False,
    ]
    assert rule(prompt_tokens_above=100, prompt_tokens_below=102).never_matches() is None  # 101 fits
    assert rule(prompt_tokens_above=100, prompt_tokens_below=101).never_matches() == (
        "no prompt is above 100 and below 101 tokens"
    )


def test_the_utc_window_is_half_open_and_may_wrap_midnight() -> None:
    """`22:30-01:15` holds from 22:30 up to (not including) 01:15; `09:00-09:00` is empty."""
    window = window_minutes("22:30-01:15")
    assert 22 * 60 + 30 in window and 22 * 60 + 29 not in window
    assert 0 in window and 60 + 14 in window and 60 + 15 not in window
    assert len(window) == 90 + 75
    day = window_minutes("09:05-17:40")
    assert min(day) == 9 * 60 + 5 and max(day) == 17 * 60 + 39 and len(day) == 8 * 60 + 35
    assert rule(hours_utc="09:00-09:00").never_matches() == "the time window is empty"


def test_the_rule_book_checks_the_window_at_the_calls_minute() -> None:
    """The first rule whose window holds at the call's UTC minute applies."""
    book = RuleBook(
        [
            RuleConfig.model_validate(
                {"name": "night", "match": {"hours_utc": "23:59-00:01"}, "set": {"policy": "cheapest"}}
            ),
            RuleConfig.model_validate({"name": "all", "set": {"policy": "ordered"}}),
        ]
    )
    at = lambda h, m: book.match("m", {}, facts(), (), datetime(2026, 1, 1, h, m, tzinfo=UTC))  # noqa: E731
    assert [r.name for r in (at(23, 59), at(0, 0), at(0, 1), at(23, 58), at(12, 0)) if r] == [
        "night",
        "night",
        "all",
        "all",
        "all",
    ]


def test_covering_judges_bounds_windows_models_and_flags_exactly() -> None:
    """A rule covers a later one only if it matches every call that one does."""
    assert rule(prompt_tokens_above=100).covers(rule(1, prompt_tokens_above=100))
    assert rule(prompt_tokens_above=100).covers(rule(1, prompt_tokens_above=150))
    assert not rule(prompt_tokens_above=100).covers(rule(1, prompt_tokens_above=50))
    assert not rule(prompt_tokens_above=100).covers(rule(1))
    assert rule(prompt_tokens_below=100).covers(rule(1, prompt_tokens_below=100))
    assert rule(prompt_tokens_below=100).covers(rule(1, prompt_tokens_below=50))
    assert not rule(prompt_tokens_below=100).covers(rule(1, prompt_tokens_below=150))
    assert not rule(prompt_tokens_below=100).covers(rule(1))
    assert rule(model=["a", "b"]).covers(rule(1, model="a")) and not rule(model="a").covers(rule(1, model=["a", "b"]))
    assert not rule(model="a").covers(rule(1))
    assert rule(tools=True).covers(rule(1, tools=True)) and not rule(tools=True).covers(rule(1, tools=False))
    assert not rule(response_format=True).covers(rule(1))
    assert rule(hours_utc="08:00-18:00").covers(rule(1, hours_utc="09:00-17:00"))
    assert not rule(hours_utc="09:00-17:00").covers(rule(1, hours_utc="08:00-18:00"))
    assert not rule(hours_utc="09:00-17:00").covers(rule(1))
    assert rule().covers(rule(1, hours_utc="09:00-17:00", tags=["x"], prompt_tokens_above=5))


def test_a_rule_for_one_model_leaves_the_others_alone() -> None:
    """`match.model`: the rule applies to that alias (or list) only."""
    only_a = rule(model="a")
    assert only_a.matches("a", frozenset(), {}, facts(), False)
    assert not only_a.matches("b", frozenset(), {}, facts(), False)
    assert rule(model=["a", "b"]).matches("b", frozenset(), {}, facts(), False)
