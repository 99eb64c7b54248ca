"""README "Policies" screening: the prompt estimate (≈ 4 characters a token, plus tool schemas), the
context-window check, and each constraint, judged on measured stats once there are some — each
exclusion with its reason."""

from __future__ import annotations

from typing import Any

from policies import Candidate, DeploymentStats, Price
from router.config.eligibility import (
    Limits,
    RequestFacts,
    Serves,
    estimate_prompt_tokens,
    exclusion_reason,
    request_facts,
)

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {}}}}


class View:
    def __init__(self, **by_id: DeploymentStats) -> None:
        self.by_id = by_id

    def get(self, candidate_id: str) -> DeploymentStats | None:
        return self.by_id.get(candidate_id)


def cand(**kw: Any) -> Candidate:
    return Candidate(id="a/m", backend="a", provider="openai", model="m", order=0, **kw)


def facts(prompt: int = 100, max_tokens: int | None = None, **kw: Any) -> RequestFacts:
    base = {"uses_tools": False, "uses_json_schema": False, "stream": False}
    return RequestFacts(prompt_tokens=prompt, max_output_tokens=max_tokens, **{**base, **kw})


def test_the_prompt_estimate_counts_text_parts_tool_calls_tools_and_schemas() -> None:
    """About four characters a token plus 4 a message; list content counts its text parts only;
    tool calls, tool schemas and a JSON schema are counted too."""
    one = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_prompt_tokens(one) == 100 + 4
    two = {"messages": [{"role": "system", "content": "y" * 40}, {"role": "user", "content": "x" * 400}]}
    assert estimate_prompt_tokens(two) == 110 + 8
    parts = [{"type": "text", "text": "x" * 200}, {"type": "image_url", "image_url": {"url": "u" * 999}}, "junk"]
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": parts}]}) == 50 + 4
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": None}]}) == 4
    call = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "z" * 400}}]
    with_call = {"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "tool_calls": call}]}
    assert estimate_prompt_tokens(with_call) > 100 + 100 + 8
    base = estimate_prompt_tokens(one)
    assert estimate_prompt_tokens({**one, "tools": [TOOL] * 10}) > base + 100
    assert estimate_prompt_tokens({**one, "response_format": SCHEMA}) > base + 20
    assert estimate_prompt_tokens({**one, "response_format": {"type": "json_object"}}) == base
    assert isinstance(estimate_prompt_tokens({"messages": [{"role": "user", "content": "abc"}]}), int)


def test_request_facts_and_the_profile_policies_see() -> None:
    """`max_tokens` (or `max_completion_tokens`) is the expected output, else 256; the stream flag carries over."""
    read = request_facts({"messages": [], "max_completion_tokens": 50, "response_format": SCHEMA}, stream=True)
    assert (read.max_output_tokens, read.uses_json_schema, read.stream) == (50, True, True)
    assert read.profile().output_tokens == 50 and read.profile().stream is True
    assert request_facts({"messages": []}, stream=False).profile().output_tokens == 256


def test_the_context_window_counts_the_prompt_and_max_tokens() -> None:
    """Excluded when prompt + max_tokens exceed the window; exactly filling it is fine."""
    serves = Serves(context_window=1000)
    assert exclusion_reason(cand(), serves, facts(900, 100), Limits(), View()) is None
    reason = exclusion_reason(cand(), serves, facts(900, 101), Limits(), View())
    assert reason == "context window 1000 tokens < ~900 prompt + 101 max_tokens"
    assert exclusion_reason(cand(), serves, facts(1000), Limits(), View()) is None
    assert exclusion_reason(cand(), serves, facts(1001), Limits(), View()) == (
        "context window 1000 tokens < ~1001 prompt + 0 max_tokens"
    )


def test_each_exclusion_says_why() -> None:
    """The reasons recorded in the route record, one per rule of screening."""
    view = View()
    assert (
        exclusion_reason(cand(), Serves(), facts(), Limits(only=("b",)), view)
        == "not in the `only` list (hint or rule)"
    )
    assert exclusion_reason(cand(), Serves(), facts(), Limits(exclude=("openai",)), view) == (
        "excluded by `exclude` (hint or rule)"
    )
    no_schema = Serves(json_schema=False, tools=False)
    assert exclusion_reason(cand(), no_schema, facts(uses_json_schema=True), Limits(), view) == (
        "does not support json_schema"
    )
    assert exclusion_reason(cand(), no_schema, facts(uses_tools=True), Limits(require=("json_schema",)), view) == (
        "does not support json_schema, tools"
    )
    assert exclusion_reason(cand(), Serves(), facts(), Limits(max_input_per_mtok=1), view) == (
        "price unknown, so it cannot be shown to meet the price cap"
    )
    assert exclusion_reason(cand(), Serves(), facts(), Limits(max_cost_usd=1), view) == (
        "price unknown, so it cannot be shown to meet max_cost_usd"
    )
    priced = cand(price=Price(input_per_mtok=2, output_per_mtok=4))
    assert (
        exclusion_reason(priced, Serves(), facts(), Limits(max_input_per_mtok=2, max_output_per_mtok=4), view) is None
    )
    assert (
        exclusion_reason(priced, Serves(), facts(), Limits(max_output_per_mtok=3.5), view) == "output $4/M > cap $3.5/M"
    )


def test_cost_and_ttft_caps_use_the_measured_stats_and_are_inclusive() -> None:
    """A cap equal to the expectation is met; measured TTFT and cache share replace the priors."""
    priced = cand(price=Price(input_per_mtok=1, output_per_mtok=0, cached_input_per_mtok=0), prior_ttft_s=2.0)
    big = facts(1_000_000, 0)
    assert exclusion_reason(priced, Serves(), big, Limits(max_cost_usd=1.0), View()) is None
    assert exclusion_reason(priced, Serves(), big, Limits(max_cost_usd=0.5), View()) is not None
    cached = View(**{"a/m": DeploymentStats(cached_share=0.8)})
    assert exclusion_reason(priced, Serves(), big, Limits(max_cost_usd=0.5), cached) is None
    assert exclusion_reason(priced, Serves(), facts(), Limits(max_ttft_s=2.0), View()) is None
    assert exclusion_reason(priced, Serves(), facts(), Limits(max_ttft_s=1.0), View()) == (
        "expected TTFT 2.00s > max_ttft_s 1s"
    )
    fast = View(**{"a/m": DeploymentStats(ttft_s=0.3)})
    assert exclusion_reason(priced, Serves(), facts(), Limits(max_ttft_s=1.0), fast) is None
