"""Config routing rules (matching, precedence, validation with lines) and live reloads."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
import respx

from router import AsyncRouter, ConfigError, load_config, route_of

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
URLS = {name: f"http://{name}.test/v1/chat/completions" for name in ("a", "b", "c")}


def completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def answering(mock: respx.Router, *, delay: float = 0.0) -> None:
    """Each backend answers with its own name, after `delay` seconds."""
    for name, url in URLS.items():

        async def reply(request: httpx.Request, name: str = name) -> httpx.Response:
            if delay:
                await anyio.sleep(delay)
            return httpx.Response(200, json=completion(json.loads(request.content)["model"], name))

        mock.post(url).mock(side_effect=reply)


def config(rules: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """Alias `chat` on a, b, c (in that order, policy ordered); alias `cheap` on c."""
    base: dict[str, Any] = {
        "backends": {
            name: {"provider": "openai", "base_url": f"http://{name}.test/v1", "api_key": f"sk-test-rules-{name}-7c1d"}
            for name in URLS
        },
        "models": {
            "chat": {
                "deployments": [
                    {"backend": "a", "model": "m", "price": {"input_per_mtok": 3, "output_per_mtok": 3}},
                    {"backend": "b", "model": "m", "price": {"input_per_mtok": 2, "output_per_mtok": 2}},
                    {"backend": "c", "model": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}},
                ],
            },
            "cheap": {"deployments": [{"backend": "c", "model": "small"}]},
        },
        "rules": rules,
    }
    base.update(overrides)
    return base


async def served(router: AsyncRouter, **kwargs: Any) -> tuple[str, str | None]:
    """Which backend answered, and which rule matched."""
    kwargs.setdefault("messages", HI)
    reply = await router.chat.completions.create(model=kwargs.pop("model", "chat"), **kwargs)
    record = route_of(reply)
    return reply.choices[0].message.content or "", record.rule


RULES = [
    {"name": "batch", "match": {"tags": ["batch"]}, "set": {"policy": "cheapest"}},
    {"name": "tenant-acme", "match": {"metadata": {"tenant": "acme"}}, "set": {"only": ["b"]}},
    {"name": "long", "match": {"prompt_tokens_above": 200}, "set": {"exclude": ["a"]}},
    {"name": "tools", "match": {"tools": True}, "set": {"only": ["c"]}},
    {"name": "json", "match": {"response_format": True, "stream": False}, "set": {"only": ["b"]}},
]
TOOL = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


async def test_each_condition_matches_and_the_rule_is_named(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock)
    async with AsyncRouter.from_config(config(RULES)) as router:
        assert await served(router) == ("a", None)  # no rule: the alias's ordered policy
        assert await served(router, route={"tags": ["batch", "x"]}) == ("c", "batch")
        assert await served(router, metadata={"tenant": "acme"}) == ("b", "tenant-acme")
        assert await served(router, metadata={"tenant": "other"}) == ("a", None)
        long = [{"role": "user", "content": "word " * 400}]
        assert await served(router, messages=long) == ("b", "long")
        assert await served(router, tools=TOOL) == ("c", "tools")
        assert await served(router, response_format={"type": "json_object"}) == ("b", "json")


@pytest.mark.httpx2(assert_all_called=False)
async def test_first_match_wins_and_a_hint_beats_the_rule(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock)
    async with AsyncRouter.from_config(config(RULES)) as router:
        # both `batch` and `tenant-acme` match: the first one listed wins
        assert await served(router, route={"tags": ["batch"]}, metadata={"tenant": "acme"}) == ("c", "batch")
        # the rule says only b; the call's own hint says only c: the hint wins, the rule is still named
        assert await served(router, metadata={"tenant": "acme"}, route={"only": ["c"]}) == ("c", "tenant-acme")
        # the rule says cheapest; the hint says ordered
        assert await served(router, route={"tags": ["batch"], "policy": "ordered"}) == ("a", "batch")


@pytest.mark.httpx2(assert_all_called=False)
async def test_a_rule_beats_the_alias_and_can_replace_its_fallbacks(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URLS["a"]).mock(return_value=httpx.Response(500, json={"error": {"message": "down"}}))
    httpx2_mock.post(URLS["c"]).mock(return_value=httpx.Response(200, json=completion("small", "c")))
    # a rule's choices apply to every tier of the call, fallbacks included (as a hint's do)
    rules = [
        {"name": "to-cheap", "match": {"model": "chat"}, "set": {"only": ["a", "c/small"], "fallbacks": ["cheap"]}}
    ]
    async with AsyncRouter.from_config(config(rules, retry={"attempts_per_deployment": 1})) as router:
        reply = await router.chat.completions.create(model="chat", messages=HI)
    record = route_of(reply)
    assert (record.rule, record.backend, record.model, record.fallback) == ("to-cheap", "c", "small", "cheap")
    assert [a.backend for a in record.attempts] == ["a", "c"]  # b is out: the rule's `only` beat the alias


@pytest.mark.httpx2(assert_all_called=False)
async def test_the_time_window_is_utc_and_may_wrap_midnight(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock)
    rules = [{"name": "night", "match": {"hours_utc": "22:00-06:00"}, "set": {"policy": "cheapest"}}]
    async with AsyncRouter.from_config(config(rules)) as router:
        for hour, expected in ((23, ("c", "night")), (5, ("c", "night")), (6, ("a", None)), (12, ("a", None))):
            router._path.wall_clock = lambda hour=hour: datetime(2026, 11, 30, hour, 0, tzinfo=UTC)
            assert await served(router) == expected, hour


@pytest.mark.httpx2(assert_all_called=False)
async def test_rules_set_deadlines_retry_and_constraints(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock, delay=0.5)
    rules = [
        {"name": "hurry", "match": {"tags": ["hurry"]}, "set": {"deadline_s": 0.2, "retry": {"max_attempts": 1}}},
        {"name": "budget", "match": {"tags": ["budget"]}, "set": {"constraints": {"max_input_per_mtok": 1.5}}},
    ]
    async with AsyncRouter.from_config(config(rules)) as router:
        started = anyio.current_time()
        with pytest.raises(openai.APITimeoutError) as caught:  # the rule's deadline, on its single attempt
            await router.chat.completions.create(model="chat", messages=HI, route={"tags": ["hurry"]})
        assert anyio.current_time() - started < 0.45  # the rule's deadline, not the 0.5 s answer
        assert len(route_of_error(caught.value).attempts) == 1
        assert await served(router, route={"tags": ["budget"]}) == ("c", "budget")  # only c costs ≤ $1.5/M
        # the call's own deadline beats the rule's
        assert await served(router, route={"tags": ["hurry"], "deadline_s": 5}) == ("a", "hurry")


def route_of_error(error: BaseException) -> Any:
    return error.route  # type: ignore[attr-defined]


async def test_explain_names_the_matched_rule() -> None:
    async with AsyncRouter.from_config(config(RULES)) as router:
        record = await router.explain(model="chat", messages=HI, route={"tags": ["batch"]})
    assert record.rule == "batch" and record.policy == "cheapest"
    assert [line.candidate for line in record.ranking] == ["c/m", "b/m", "a/m"]


# --- validation: every problem at once, each with its line ------------------------------------

BAD = """\
backends:
  a: {provider: openai, base_url: "http://a.test/v1"}
  b: {provider: openai, base_url: "http://b.test/v1"}
models:
  chat:
    deployments:
      - {backend: a, model: m, price: {input_per_mtok: 3, output_per_mtok: 3}}
    constraints: {max_input_per_mtok: 1}
  other:
    deployments: [{backend: b, model: n}]
rules:
  - name: typo
    match: {tag: [x]}
    set: {policy: cheapest}
  - name: ghosts
    match: {model: ghost}
    set: {policy: nope, fallbacks: [nowhere], only: [zz]}
  - name: everything
    set: {policy: fastest}
  - name: shadowed
    match: {model: chat}
    set: {policy: cheapest}
  - name: empty-range
    match: {prompt_tokens_above: 100, prompt_tokens_below: 50}
    set: {policy: cheapest}
  - name: impossible
    match: {model: other}
    set: {only: [a]}
  - name: bad-window
    match: {hours_utc: "25:00-01:00"}
    set: {}
"""


def test_every_rule_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = {(issue.line, issue.path): issue.message for issue in caught.value.issues}
    expected = {
        (8, "models.chat.constraints"): "no deployment of this model meets these price caps at any hour",
        (13, "rules[0].match.tag"): "unknown field",
        (16, "rules[1].match.model"): "unknown model 'ghost'; known: chat, other",
        (17, "rules[1].set.policy"): "unknown policy 'nope'",
        (17, "rules[1].set.fallbacks[0]"): "unknown model 'nowhere'",
        (17, "rules[1].set.only[0]"): "unknown backend 'zz'",
        (20, "rules[3]"): "unreachable: rule 'everything' (line 18) matches every call this one does",
        (24, "rules[4].match"): "this rule can never match: no prompt is above 100 and below 50 tokens",
        (26, "rules[5]"): "unreachable",
        (28, "rules[5].set.only"): "impossible: no deployment of 'other' can serve under this rule",
        (30, "rules[6].match.hours_utc"): "expected a UTC window `HH:MM-HH:MM`",
    }
    for where, message in expected.items():
        assert where in found, f"{where} missing from {sorted(found)}"
        assert found[where].startswith(message), (where, found[where])
    assert all(str(issue).startswith(f"{path}:") for issue in caught.value.issues)


# --- reload ------------------------------------------------------------------------------------


def two_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    old = config([])
    new = config([])
    old["models"]["chat"]["deployments"] = [{"backend": "a", "model": "m"}]
    new["models"]["chat"]["deployments"] = [{"backend": "b", "model": "m"}]
    return old, new


@pytest.mark.httpx2(assert_all_called=False)
async def test_reload_under_load_loses_and_mixes_nothing(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock, delay=0.05)
    old, new = two_configs()
    results: list[tuple[str, str, str]] = []

    async def one(expect: str) -> None:
        reply = await router.chat.completions.create(model="chat", messages=HI)
        record = route_of(reply)
        results.append((expect, reply.choices[0].message.content or "", "".join(a.backend for a in record.attempts)))

    async with AsyncRouter.from_config(old) as router, anyio.create_task_group() as calls:
        for _ in range(40):
            calls.start_soon(one, "a")
        await anyio.sleep(0.01)  # all 40 are in flight on the old config
        await router.reload(new)
        for _ in range(40):
            calls.start_soon(one, "b")
    assert len(results) == 80
    assert all(answer == expect and attempts == expect for expect, answer, attempts in results), results


@pytest.mark.httpx2(assert_all_called=False)
async def test_an_invalid_reload_keeps_the_old_config_and_says_why(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock)
    old, _ = two_configs()
    broken = config([{"name": "x", "match": {"model": "nope"}, "set": {}}])
    async with AsyncRouter.from_config(old) as router:
        for _ in range(3):
            await served(router)
        with pytest.raises(ConfigError, match="unknown model 'nope'"):
            await router.reload(broken)
        assert router.reload_error is not None
        assert await served(router) == ("a", None)
        before = router.stats.snapshot("a/m", anyio.current_time())
        assert before is not None and before.requests == 4


@pytest.mark.httpx2(assert_all_called=False)
async def test_stats_survive_a_reload_for_deployments_that_remain(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock)
    both = config([])
    async with AsyncRouter.from_config(both) as router:
        for _ in range(3):
            await served(router)
        assert await served(router, model="cheap") == ("c", None)
        gone = router.stats.snapshot("c/small", anyio.current_time())
        assert gone is not None and gone.requests == 1
        only_a = config([])
        only_a["models"]["chat"]["deployments"] = only_a["models"]["chat"]["deployments"][:1]
        del only_a["models"]["cheap"]
        await router.reload(only_a)
        now = anyio.current_time()
        kept = router.stats.snapshot("a/m", now)
        assert kept is not None and kept.requests == 3
        await router.reload(both)
        back = router.stats.snapshot("c/small", now)  # removed, then configured again: its history was dropped
        assert back is None or back.requests == 0


@pytest.mark.httpx2(assert_all_called=False)
async def test_a_watched_file_reloads_on_change_and_keeps_the_old_on_a_bad_edit(
    httpx2_mock: respx.Router, tmp_path: Path
) -> None:
    answering(httpx2_mock)
    path = tmp_path / "router.yaml"

    def write(backend: str) -> None:
        path.write_text(
            textwrap.dedent(
                f"""\
                backends:
                  {backend}: {{provider: openai, base_url: "http://{backend}.test/v1", api_key: sk-test-watch-{backend}-0e2f}}
                models:
                  chat: {{deployments: [{{backend: {backend}, model: m}}]}}
                """
            )
        )

    async def settle(expected: str) -> None:
        with anyio.fail_after(5):
            while (await served(router))[0] != expected:
                await anyio.sleep(0.05)

    write("a")
    async with AsyncRouter.from_config(path, watch=0.05) as router:
        assert await served(router) == ("a", None)
        write("b")
        await settle("b")
        path.write_text("backends: {b: {provider: nope}}\nmodels: {}\n")
        with anyio.fail_after(5):
            while router.reload_error is None:
                await anyio.sleep(0.05)
        assert "unknown provider 'nope'" in str(router.reload_error)
        assert await served(router) == ("b", None)  # the last good config still serves
        write("c")
        await settle("c")
        assert router.reload_error is None


@pytest.mark.httpx2(assert_all_called=False)
def test_the_sync_router_reloads_too(httpx2_mock: respx.Router) -> None:
    from router import Router

    answering(httpx2_mock)
    old, new = two_configs()
    with Router.from_config(old) as router:
        assert router.chat.completions.create(model="chat", messages=HI).choices[0].message.content == "a"
        router.reload(new)
        assert router.chat.completions.create(model="chat", messages=HI).choices[0].message.content == "b"


@pytest.mark.httpx2(assert_all_called=False)
async def test_metadata_conditions_any_value_one_of_and_absent(httpx2_mock: respx.Router) -> None:
    answering(httpx2_mock)
    rules = [
        {"name": "no-tenant", "match": {"metadata": {"tenant": False}}, "set": {"only": ["c"]}},
        {"name": "eu", "match": {"metadata": {"region": ["eu-west", "eu-central"]}}, "set": {"only": ["b"]}},
        {"name": "any-tenant", "match": {"metadata": {"tenant": True}}, "set": {"policy": "cheapest"}},
    ]
    async with AsyncRouter.from_config(config(rules)) as router:
        assert await served(router) == ("c", "no-tenant")
        assert await served(router, metadata={"tenant": "x", "region": "eu-central"}) == ("b", "eu")
        assert await served(router, metadata={"tenant": "x", "region": "us"}) == ("c", "any-tenant")


def test_unreachable_means_an_earlier_rule_matches_everything_this_one_does() -> None:
    from router.config import RuleConfig
    from router.config.rules import Rule

    def rule(match: dict[str, Any]) -> Rule:
        return Rule.compile(0, RuleConfig.model_validate({"match": match, "set": {}}))

    covers = [
        ({}, {"tags": ["x"]}),
        ({"tags": ["x"]}, {"tags": ["x", "y"], "model": "chat"}),
        ({"model": ["chat", "cheap"]}, {"model": "chat"}),
        ({"prompt_tokens_above": 100}, {"prompt_tokens_above": 500, "prompt_tokens_below": 900}),
        ({"hours_utc": "20:00-08:00"}, {"hours_utc": "22:00-06:00"}),
        ({"metadata": {"tenant": True}}, {"metadata": {"tenant": "acme"}}),
        ({"metadata": {"tenant": ["a", "b"]}}, {"metadata": {"tenant": "a", "region": "eu"}}),
        ({"metadata": {"tenant": False}}, {"metadata": {"tenant": False}, "stream": True}),
    ]
    for earlier, later in covers:
        assert rule(earlier).covers(rule(later)), (earlier, later)
    not_covers = [
        ({"tags": ["x"]}, {}),
        ({"model": "chat"}, {"model": ["chat", "cheap"]}),
        ({"prompt_tokens_above": 500}, {"prompt_tokens_above": 100}),
        ({"hours_utc": "22:00-06:00"}, {"hours_utc": "20:00-08:00"}),
        ({"metadata": {"tenant": "acme"}}, {"metadata": {"tenant": True}}),
        ({"metadata": {"tenant": False}}, {"metadata": {"tenant": True}}),
        ({"metadata": {"tenant": True}}, {"metadata": {"tenant": False}}),
        ({"stream": True}, {"tools": True}),
    ]
    for earlier, later in not_covers:
        assert not rule(earlier).covers(rule(later)), (earlier, later)


@pytest.mark.httpx2(assert_all_called=False)
def test_the_sync_router_watches_its_file(httpx2_mock: respx.Router, tmp_path: Path) -> None:
    import time

    from router import Router

    answering(httpx2_mock)
    path = tmp_path / "router.yaml"
    template = 'backends: {X: {provider: openai, base_url: "http://X.test/v1"}}\nmodels: {chat: {deployments: [{backend: X, model: m}]}}\n'
    path.write_text(template.replace("X", "a"))
    with Router.from_config(path, watch=True) as router:
        assert router.chat.completions.create(model="chat", messages=HI).choices[0].message.content == "a"
        path.write_text(template.replace("X", "b"))
        deadline = time.monotonic() + 5
        while "b" not in router.config.backends and time.monotonic() < deadline:
            time.sleep(0.05)
        assert router.chat.completions.create(model="chat", messages=HI).choices[0].message.content == "b"


def test_toml_rules_get_their_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        textwrap.dedent(
            """\
            [backends.a]
            provider = "groq"

            [models.chat]
            deployments = [{backend = "a", model = "m"}]

            [[rules]]
            name = "all"
            set = {policy = "cheapest"}

            [[rules]]
            name = "later"
            match = {tags = ["x"]}
            set = {policy = "nope"}
            """
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = {(issue.line, issue.path) for issue in caught.value.issues}
    assert found == {(11, "rules[1]"), (14, "rules[1].set.policy")}
