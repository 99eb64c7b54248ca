"""The router is an openai client: every method routed through the one path, openai's types back,
the route record on whatever a call returns, and errors of the router's own classes.

Backends are mocked (`tests/openai_backends.py`): `down` answers 503, so each first call falls
over to `up`, and every test checks the answer and that the fallback served it.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import respx
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ParsedChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel

from router import AsyncRouter, BadRequestError, NoCandidatesError, RateLimitError, Router, UnknownModelError, route_of
from router.path.record import HEADER_PREFIX
from tests import openai_backends as backends

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]


class Person(BaseModel):
    name: str
    age: int


def served_by_fallback(obj: Any) -> None:
    """The answer came from `up` after `down` failed (or was skipped with its circuit open)."""
    record = route_of(obj)
    assert record.backend == "up"
    assert record.attempts[-1].outcome == "ok"
    assert [a.backend for a in record.attempts if a.sent] == ["down", "up"]


def embed_config() -> dict[str, Any]:
    config = backends.config()
    config["models"]["embed"] = {
        "policy": "ordered",
        "deployments": [
            {"backend": "down", "model": "e-down", "endpoints": ["embeddings"]},
            {"backend": "up", "model": "e-up", "endpoints": ["embeddings"]},
        ],
    }
    return config


# --- it is an openai client ------------------------------------------------------------------


async def test_is_an_openai_client_with_placeholders_that_are_never_sent(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        assert isinstance(router, openai.AsyncOpenAI)
        assert str(router.base_url).startswith("http://inference-router.invalid/v1")
        assert router.api_key == "inference-router" and router.max_retries == 0
        raw = await router.chat.completions.with_raw_response.create(model="chat", messages=HI)
    sent = [call.request for call in httpx2_mock.calls]
    assert all(r.headers["authorization"] == f"Bearer {backends.KEYS[r.url.host.split('.')[0]]}" for r in sent)
    assert not any(k.lower().startswith("x-stainless") for r in sent for k in r.headers)
    assert raw.http_response.status_code == 200 and seen["up"]


async def test_router_with_no_arguments_reads_the_config_file_the_environment_names(
    httpx2_mock: respx.Router, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backends.mock(httpx2_mock)
    path = tmp_path / "router.json.yaml"
    path.write_text(json.dumps(backends.config()))
    monkeypatch.setenv("INFERENCE_ROUTER_CONFIG", str(path))
    async with AsyncRouter() as router:
        reply = await router.chat.completions.create(model="chat", messages=HI)
    assert reply.choices[0].message.content == "Hello from up."


async def test_with_options_and_copy_share_stats_circuits_and_config(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        quick = router.with_options(timeout=30)
        copied = router.copy(default_headers={"x-team": "search"})
        assert isinstance(quick, AsyncRouter) and quick.stats is router.stats and copied.engine is router.engine
        await quick.chat.completions.create(model="chat", messages=HI)
        await copied.chat.completions.parse(model="chat", messages=HI, response_format=Person)
        assert router.stats.view(0).get("up/m-up").requests == 2  # type: ignore[union-attr]
        health = {h.deployment: h for h in await router.health()}
    assert health["down/m-down"].recent_errors  # the copies' failures are the router's


async def test_models_list_and_retrieve_answer_from_the_config_without_a_network_call(
    httpx2_mock: respx.Router,
) -> None:
    async with AsyncRouter(embed_config()) as router:
        listed = [m.id async for m in router.models.list()]
        one = await router.models.retrieve("embed")
        with pytest.raises(openai.NotFoundError) as missing:
            await router.models.retrieve("nope")
    assert listed == ["chat", "embed", "e-down", "e-up", "m-down", "m-up"]  # aliases first, then model ids
    assert one.id == "embed" and not httpx2_mock.calls
    assert isinstance(missing.value, UnknownModelError) and "known models: chat, embed" in str(missing.value)


# --- every method routed -----------------------------------------------------------------------


async def test_parse_validates_into_the_callers_model_after_a_fallback(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        parsed = await router.chat.completions.parse(model="chat", messages=HI, response_format=Person)
    assert isinstance(parsed, ParsedChatCompletion)
    assert parsed.choices[0].message.parsed == Person(name="Ada", age=36)
    assert seen["up"][0]["response_format"]["type"] == "json_schema"  # openai's own schema went upstream
    served_by_fallback(parsed)


async def test_stream_helper_accumulates_and_reports_the_route(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        async with router.chat.completions.stream(model="chat", messages=HI) as stream:
            deltas = [event.delta async for event in stream if event.type == "content.delta"]
            final = await stream.get_final_completion()
        served_by_fallback(stream)
    assert "".join(deltas) == "Hello from up." == final.choices[0].message.content


async def test_raw_response_carries_route_headers_and_parses(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        raw = await router.chat.completions.with_raw_response.create(model="chat", messages=HI)
        reply = raw.parse()
    headers = raw.headers
    assert headers[HEADER_PREFIX + "backend"] == "up" and headers[HEADER_PREFIX + "model"] == "m-up"
    assert headers[HEADER_PREFIX + "attempts"] == "2"
    assert headers[HEADER_PREFIX + "tried"] == "down/m-down:overloaded, up/m-up:ok"
    assert float(headers[HEADER_PREFIX + "latency-ms"]) > 0
    assert isinstance(reply, ChatCompletion) and reply.choices[0].message.content == "Hello from up."
    served_by_fallback(raw)


async def test_streaming_response_gives_headers_before_the_body(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        async with router.chat.completions.with_streaming_response.create(
            model="chat", messages=HI, stream=True
        ) as response:
            assert response.headers[HEADER_PREFIX + "backend"] == "up"
            lines = [line async for line in response.iter_lines() if line.startswith("data: ")]
        served_by_fallback(response)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[1].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hello f"


async def test_embeddings_route_only_to_deployments_that_serve_them(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    async with AsyncRouter(embed_config()) as router:
        result = await router.embeddings.create(model="embed", input=["a", "b"])
        with pytest.raises(NoCandidatesError) as none:
            await router.embeddings.create(model="chat", input="a")
    assert isinstance(result, CreateEmbeddingResponse) and len(result.data) == 2
    served_by_fallback(result)
    assert route_of(result).usage.prompt_tokens == 8  # type: ignore[union-attr]
    message = str(none.value)
    assert "down/m-down: does not serve the embeddings endpoint" in message and "up/m-up" in message


async def test_embeddings_are_cached_as_deterministic(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter({**embed_config(), "cache": {"backend": "memory"}}) as router:
        first = await router.embeddings.create(model="embed", input="same text")
        second = await router.embeddings.create(model="embed", input="same text")
    assert first.data[0].embedding == second.data[0].embedding
    assert route_of(second).cached and len(seen["up"]) == 1


async def test_legacy_completions_streamed_and_not(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        whole = await router.completions.create(model="chat", prompt="hello")
        stream = await router.completions.create(model="chat", prompt="hello", stream=True)
        pieces = [c.choices[0].text async for c in stream if c.choices]
    assert isinstance(whole, Completion) and whole.choices[0].text == " world"
    served_by_fallback(whole)
    assert "".join(pieces) == " world"
    record = route_of(stream)
    assert record.complete and record.backend == "up" and record.usage.completion_tokens == 1  # type: ignore[union-attr]


async def test_responses_create_parse_and_stream(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        response = await router.responses.create(model="chat", input="hi")
        parsed = await router.responses.parse(model="chat", input="hi", text_format=Person)
        async with router.responses.stream(model="chat", input="hi") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert isinstance(response, Response) and response.output_text == "Hello from the Responses API."
    served_by_fallback(response)
    assert parsed.output_parsed == Person(name="Ada", age=36)
    assert "".join(deltas) == final.output_text == "Hello from the Responses API."
    assert route_of(response).usage.prompt_tokens == 7  # type: ignore[union-attr]


async def test_previous_response_id_goes_back_to_the_deployment_that_holds_it(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    config = backends.config()
    config["models"]["chat"]["policy"] = "ordered"
    async with AsyncRouter(config) as router:
        first = await router.responses.create(model="chat", input="hi")
        follow = await router.responses.create(model="chat", input="and?", previous_response_id=first.id)
        again = await router.responses.retrieve(first.id)
    assert route_of(follow).backend == "up" and [a.backend for a in route_of(follow).attempts] == ["up"]
    assert route_of(follow).excluded[0].reason == "not in the `only` list (hint or rule)"
    assert again.id == first.id and seen["up"][-1] == {"method": "GET"}


@pytest.mark.httpx2(assert_all_called=False)
async def test_hints_travel_in_extra_body_and_never_go_upstream(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        parsed = await router.chat.completions.parse(
            model="chat",
            messages=HI,
            response_format=Person,
            extra_body={"route": {"exclude": ["down"], "tags": ["t1"]}},
        )
        fast = await router.chat.completions.create(model="chat", messages=HI, extra_body={"route": {"only": ["up"]}})
        with pytest.raises(BadRequestError, match="unknown routing hint 'bogus'"):
            await router.responses.create(model="chat", input="hi", extra_body={"route": {"bogus": 1}})
    assert [a.backend for a in route_of(parsed).attempts] == ["up"] and route_of(parsed).tags == ["t1"]
    assert [a.backend for a in route_of(fast).attempts] == ["up"]
    assert not seen["down"] and all("route" not in body for body in seen["up"])


async def test_parse_takes_the_fast_path_and_parses_as_openai_does(httpx2_mock: respx.Router) -> None:
    """`parse` is routed like `create` (the fallback, the record), and openai's parser reads the answer:
    the message into `response_format`, a strict tool's arguments into its model; `with_raw_response`
    still goes through openai's code and parses the same."""
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(backends.config()) as router:
        parsed = await router.chat.completions.parse(model="chat", messages=HI, response_format=Person)
        tool = openai.pydantic_function_tool(Person, name="save_person")
        called = await router.chat.completions.parse(model="chat", messages=HI, tools=[tool])
        raw = await router.chat.completions.with_raw_response.parse(model="chat", messages=HI, response_format=Person)
    assert isinstance(parsed, ParsedChatCompletion) and parsed.choices[0].message.parsed == Person(name="Ada", age=36)
    served_by_fallback(parsed)
    assert seen["up"][0]["response_format"]["json_schema"]["name"] == "Person"
    call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.parsed_arguments == Person(name="Ada", age=36)  # type: ignore[union-attr]
    assert raw.headers[HEADER_PREFIX + "backend"] == "up"
    assert raw.parse().choices[0].message.parsed == Person(name="Ada", age=36)


async def test_errors_keep_the_routers_class_through_openais_code(httpx2_mock: respx.Router) -> None:
    httpx2_mock.route(url__startswith=backends.DOWN).respond(
        429, headers={"retry-after": "7"}, json={"error": {"message": "slow down"}}
    )
    httpx2_mock.route(url__startswith=backends.UP).respond(429, json={"error": {"message": "slow down too"}})
    async with AsyncRouter(backends.config()) as router:
        with pytest.raises(RateLimitError) as caught:
            await router.chat.completions.parse(model="chat", messages=HI, response_format=Person)
        with pytest.raises(UnknownModelError):
            await router.embeddings.create(model="nope", input="a")
    assert isinstance(caught.value, openai.RateLimitError) and caught.value.attempts
    assert [a.outcome for a in caught.value.attempts] == ["rate_limited", "rate_limited"]


async def test_an_api_the_router_does_not_route_gets_a_clear_404(httpx2_mock: respx.Router) -> None:
    async with AsyncRouter(backends.config()) as router:
        with pytest.raises(openai.NotFoundError, match="does not route GET /v1/files"):
            await router.files.list()
    assert not httpx2_mock.calls


# --- the sync client ---------------------------------------------------------------------------


def test_sync_router_is_an_openai_client_for_every_method(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    with Router(embed_config()) as router:
        assert isinstance(router, openai.OpenAI)
        parsed = router.chat.completions.parse(model="chat", messages=HI, response_format=Person)
        with router.chat.completions.stream(model="chat", messages=HI) as stream:
            text = "".join(e.delta for e in stream if e.type == "content.delta")
        raw = router.with_options(timeout=20).chat.completions.with_raw_response.create(model="chat", messages=HI)
        vectors = router.embeddings.create(model="embed", input="a")
        answer = router.responses.create(model="chat", input="hi")
        streamed = router.completions.create(model="chat", prompt="x", stream=True)
        pieces = "".join(c.choices[0].text for c in streamed if c.choices)
        listed = [m.id for m in router.models.list()]
    assert parsed.choices[0].message.parsed == Person(name="Ada", age=36)
    assert text == "Hello from up." and raw.headers[HEADER_PREFIX + "backend"] == "up"
    assert route_of(vectors).backend == "up" and answer.output_text.startswith("Hello")
    assert pieces == " world" and listed[:2] == ["chat", "embed"]


async def test_explain_names_deployments_that_do_not_serve_the_endpoint(httpx2_mock: respx.Router) -> None:
    async with AsyncRouter(embed_config()) as router:
        record = await router.explain(model="chat", endpoint="embeddings", input="a")
        chat = await router.explain(model="chat", messages=HI)
    assert {e.candidate: e.reason for e in record.excluded} == {
        "down/m-down": "does not serve the embeddings endpoint (openai serves chat, completions, responses;"
        " a deployment's `endpoints:` overrides)",
        "up/m-up": "does not serve the embeddings endpoint (openai serves chat, completions, responses;"
        " a deployment's `endpoints:` overrides)",
    }
    assert record.endpoint == "embeddings" and not record.ranking
    assert [r.candidate for r in chat.ranking] == ["down/m-down", "up/m-up"] and not httpx2_mock.calls


async def test_embeddings_fast_path_takes_route_hints_and_raw_responses_still_work(httpx2_mock: respx.Router) -> None:
    seen = backends.mock(httpx2_mock)
    async with AsyncRouter(embed_config()) as router:
        only_up = await router.embeddings.create(model="embed", input="a", route={"only": ["up"], "tags": ["rag"]})
        raw = await router.embeddings.with_raw_response.create(model="embed", input="b")
    assert isinstance(only_up, CreateEmbeddingResponse) and only_up.data[0].embedding == [0.1, 0.2, 0.3]
    assert [a.backend for a in route_of(only_up).attempts] == ["up"] and route_of(only_up).tags == ["rag"]
    assert raw.headers[HEADER_PREFIX + "endpoint"] == "embeddings" and raw.parse().data[0].index == 0
    assert seen["up"][0] == {"input": "a", "model": "e-up"}  # the caller's fields only, for the deployment's model


def test_sync_streams_from_many_threads_are_whole_and_a_break_raises_in_the_reading_thread(
    httpx2_mock: respx.Router,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from router import StreamInterruptedError

    backends.mock(httpx2_mock)
    with Router(backends.config()) as router:

        def read(_: int) -> str:
            stream = router.chat.completions.create(model="chat", messages=HI, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        with ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(read, range(32)))
    httpx2_mock.routes.clear()
    with Router(backends.config()) as router:
        cut = (
            b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
        )
        httpx2_mock.route(url__startswith=backends.DOWN).respond(
            200, headers={"content-type": "text/event-stream"}, content=cut
        )
        stream = router.chat.completions.create(model="chat", messages=HI, stream=True, route={"only": ["down"]})
        first = next(stream)
        with pytest.raises(StreamInterruptedError) as broken:
            next(stream)
        with pytest.raises(StopIteration):
            next(stream)
    assert texts == ["Hello from up."] * 32
    assert first.choices[0].delta.content == "Hel" and broken.value.partial_text == "Hel"


async def test_usage_cost_and_hooks_cover_every_endpoint(httpx2_mock: respx.Router) -> None:
    backends.mock(httpx2_mock)
    config = embed_config()
    for alias in ("chat", "embed"):
        for deployment in config["models"][alias]["deployments"]:
            deployment["price"] = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    ended: list[str] = []
    async with AsyncRouter(config) as router:
        router.on("success", lambda event: ended.append(event.record.endpoint))
        await router.embeddings.create(model="embed", input=["a", "b"], route={"tags": ["rag"]})
        await router.completions.create(model="chat", prompt="x")
        response = await router.responses.create(model="chat", input="hi")
        rows = {row.tag: row for row in router.usage(group_by=("tag",))}
    assert sorted(ended) == ["completions", "embeddings", "responses"]
    assert rows["rag"].prompt_tokens == 8 and rows["rag"].cost_usd == pytest.approx(8 / 1e6)
    assert route_of(response).cost_usd == pytest.approx((7 * 1.0 + 5 * 2.0) / 1e6)


def test_router_with_no_config_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from router import ConfigError

    monkeypatch.delenv("INFERENCE_ROUTER_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="set INFERENCE_ROUTER_CONFIG to a YAML/TOML file"):
        AsyncRouter()
