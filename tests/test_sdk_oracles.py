"""The official `groq` (1.7.0) and `cerebras-cloud-sdk` (1.91.0) SDKs as oracles for our adapters.

The same recorded wire bytes are served twice: to the official SDK (httpx 0.28, mocked by
respx's default `httpcore` mocker) and to our adapter (httpx2, mocked by the `httpx2_mock`
fixture). Both must read the same answer: content, tool calls (ids, names, concatenated
arguments), usage numbers, finish_reason, and matching error classes. Every test also checks
that both mocks were really hit, so neither side can pass by talking to something else.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import cerebras.cloud.sdk as cerebras_sdk
import groq
import httpx
import httpx2
import pytest
import respx

import providers
from providers import (
    AuthFailed,
    BadRequest,
    ContextTooLong,
    Deadlines,
    OpenAICompatible,
    Overloaded,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    ServerError,
)

pytestmark = pytest.mark.anyio

KEY = "test-key-oracle-83b2c6e1"
MESSAGES = [{"role": "user", "content": "Weather in Paris and Rome?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
_TLS = ssl.create_default_context()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Oracle:
    """One provider: its official SDK, its API module (for exception classes) and its wire URL."""

    kind: str
    url: str
    sdk_module: Any
    make_sdk: Callable[[], Any]


ORACLES = {
    "groq": Oracle(
        "groq",
        "https://api.groq.com/openai/v1/chat/completions",
        groq,
        # The SDK appends /openai/v1 itself: its base URL is the bare host.
        lambda: groq.AsyncGroq(base_url="https://api.groq.com", api_key=KEY, max_retries=0),
    ),
    "cerebras": Oracle(
        "cerebras",
        "https://api.cerebras.ai/v1/chat/completions",
        cerebras_sdk,
        # warm_tcp_connection=True would make a blocking GET /v1/tcp_warming in the constructor.
        lambda: cerebras_sdk.AsyncCerebras(
            base_url="https://api.cerebras.ai", api_key=KEY, max_retries=0, warm_tcp_connection=False
        ),
    ),
}


@pytest.fixture
def sdk_mock() -> Iterator[respx.Router]:
    """respx on plain httpx/httpcore, where the official SDKs live (httpx2_mock covers our adapter)."""
    with respx.mock(using="httpcore", assert_all_called=True, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def serve(httpx2_mock: respx.Router, sdk_mock: respx.Router) -> Iterator[Callable[..., None]]:
    """`serve(oracle, respond)` routes the oracle's URL to `respond` in both worlds; checks both were hit once."""
    routes: list[respx.Route] = []

    def register(oracle: Oracle, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        routes.append(sdk_mock.post(oracle.url).mock(side_effect=respond))
        routes.append(httpx2_mock.post(oracle.url).mock(side_effect=respond))

    yield register
    assert [r.call_count for r in routes] == [1] * len(routes), "each side must fetch the recorded bytes once"
    for route in routes:
        assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


def adapter(oracle: Oracle) -> OpenAICompatible:
    return providers.PROVIDERS[oracle.kind](api_key=KEY, name=oracle.kind)  # default base URL


def deadlines() -> Deadlines:
    now = anyio.current_time()
    return Deadlines(connect_s=1, first_token_at=now + 5, stall_s=5, total_at=now + 10)


def body(*, stream: bool) -> dict[str, Any]:
    return {"model": "gpt-oss-120b", "messages": MESSAGES, "tools": TOOLS, **({"stream": True} if stream else {})}


# --- recorded wire bytes -------------------------------------------------------------------

NON_STREAM = {
    "groq": (
        b'{"id":"chatcmpl-7e1c","object":"chat.completion","created":1764460800,"model":"openai/gpt-oss-120b",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Checking both.",'
        b'"reasoning":"Two cities, two calls.","tool_calls":[{"id":"fc_01a","type":"function",'
        b'"function":{"name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}"}},{"id":"fc_01b",'
        b'"type":"function","function":{"name":"get_weather","arguments":"{\\"city\\": \\"Rome\\"}"}}]},'
        b'"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"queue_time":0.0213,"prompt_tokens":181,'
        b'"prompt_time":0.0071,"completion_tokens":64,"completion_time":0.0532,"total_tokens":245,'
        b'"total_time":0.0603,"prompt_tokens_details":{"cached_tokens":128},'
        b'"completion_tokens_details":{"reasoning_tokens":12}},"usage_breakdown":null,'
        b'"system_fingerprint":"fp_a09bde29de","x_groq":{"id":"req_01kb2m0xyz"},"service_tier":"on_demand"}'
    ),
    "cerebras": (
        b'{"id":"chatcmpl-4f0a","object":"chat.completion","created":1764460800,"model":"gpt-oss-120b",'
        b'"system_fingerprint":"fp_d6ad1a5a8e","choices":[{"index":0,"message":{"role":"assistant",'
        b'"content":"Checking both.","reasoning":"Two cities, two calls.","tool_calls":[{"id":"5c1b2e3f4",'
        b'"type":"function","function":{"name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}"}},'
        b'{"id":"6d2c3f4a5","type":"function","function":{"name":"get_weather",'
        b'"arguments":"{\\"city\\": \\"Rome\\"}"}}]},"finish_reason":"tool_calls"}],"usage":{'
        b'"prompt_tokens":181,"completion_tokens":64,"total_tokens":245,"prompt_tokens_details":'
        b'{"cached_tokens":128},"completion_tokens_details":{"reasoning_tokens":12}},'
        b'"time_info":{"queue_time":0.000212,"prompt_time":0.0019,"completion_time":0.0211,'
        b'"total_time":0.0243,"created":1764460800.12}}'
    ),
}

_GROQ_CHUNK = b'{"id":"chatcmpl-7e1d","object":"chat.completion.chunk","created":1764460800,"model":"openai/gpt-oss-120b","system_fingerprint":"fp_a09bde29de",'
_CEREBRAS_CHUNK = b'{"id":"chatcmpl-4f0b","object":"chat.completion.chunk","created":1764460800,"model":"gpt-oss-120b","system_fingerprint":"fp_d6ad1a5a8e",'
STREAM = {
    # Groq: one tool call split over three deltas, a second one whole; usage only in x_groq on the last chunk.
    "groq": b"".join(
        b"data: " + _GROQ_CHUNK + line + b"\n\n"
        for line in [
            b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"x_groq":{"id":"req_01kb2m1abc"}}',
            b'"choices":[{"index":0,"delta":{"reasoning":"Two cities."},"logprobs":null,"finish_reason":null}]}',
            b'"choices":[{"index":0,"delta":{"content":"Checking "},"logprobs":null,"finish_reason":null}]}',
            b'"choices":[{"index":0,"delta":{"content":"both."},"logprobs":null,"finish_reason":null}]}',
            b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"fc_01a","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}]}',
            b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\": "}}]},"logprobs":null,"finish_reason":null}]}',
            b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}',
            b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"fc_01b","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\": \\"Rome\\"}"}}]},"logprobs":null,"finish_reason":null}]}',
            b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"x_groq":{"id":"req_01kb2m1abc","usage":{"queue_time":0.0213,"prompt_tokens":181,"prompt_time":0.0071,"completion_tokens":64,"completion_time":0.0532,"total_tokens":245,"total_time":0.0603,"prompt_tokens_details":{"cached_tokens":128},"completion_tokens_details":{"reasoning_tokens":12}}}}',
        ]
    )
    + b"data: [DONE]\n\n",
    # Cerebras: same answer; usage and time_info at top level of the last chunk.
    "cerebras": b"".join(
        b"data: " + _CEREBRAS_CHUNK + line + b"\n\n"
        for line in [
            b'"choices":[{"index":0,"delta":{"role":"assistant"}}]}',
            b'"choices":[{"index":0,"delta":{"reasoning":"Two cities."}}]}',
            b'"choices":[{"index":0,"delta":{"content":"Checking "}}]}',
            b'"choices":[{"index":0,"delta":{"content":"both."}}]}',
            b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"5c1b2e3f4","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\""}}]}}]}',
            b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":": \\"Paris\\"}"}}]}}]}',
            b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"6d2c3f4a5","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\": \\"Rome\\"}"}}]}}]}',
            b'"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":181,"completion_tokens":64,"total_tokens":245,"prompt_tokens_details":{"cached_tokens":128},"completion_tokens_details":{"reasoning_tokens":12}},"time_info":{"queue_time":0.000212,"prompt_time":0.0019,"completion_time":0.0211,"total_time":0.0243,"created":1764460800.12}}',
        ]
    )
    + b"data: [DONE]\n\n",
}

TOOL_IDS = {"groq": ("fc_01a", "fc_01b"), "cerebras": ("5c1b2e3f4", "6d2c3f4a5")}


def expected_answer(kind: str) -> dict[str, Any]:
    first, second = TOOL_IDS[kind]
    return {
        "content": "Checking both.",
        "tool_calls": [(first, "get_weather", '{"city": "Paris"}'), (second, "get_weather", '{"city": "Rome"}')],
        "finish_reason": "tool_calls",
    }


EXPECTED_USAGE = {
    "prompt_tokens": 181,
    "completion_tokens": 64,
    "total_tokens": 245,
    "cached_tokens": 128,
    "reasoning_tokens": 12,
}


def json_bytes(status: int, raw: bytes, headers: dict[str, str] | None = None) -> Callable[..., httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=raw, headers={"content-type": "application/json", **(headers or {})})

    return respond


def sse_bytes(raw: bytes, pieces: int = 7) -> Callable[..., httpx.Response]:
    """Serve `raw` as a stream, cut at arbitrary byte offsets (events straddle network reads)."""

    def respond(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            step = max(1, len(raw) // pieces)
            for start in range(0, len(raw), step):
                yield raw[start : start + step]

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return respond


# --- reading both sides into one shape -----------------------------------------------------


def answer_of_completion(data: dict[str, Any]) -> dict[str, Any]:
    choice = data["choices"][0]
    message = choice["message"]
    calls = [(t["id"], t["function"]["name"], t["function"]["arguments"]) for t in message.get("tool_calls") or []]
    return {"content": message.get("content"), "tool_calls": calls, "finish_reason": choice["finish_reason"]}


def answer_of_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Accumulate deltas the way an OpenAI client does: text concatenated, tool calls by index."""
    content, finish = "", None
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], ["", "", ""])
                function = call.get("function") or {}
                slot[0] = call.get("id") or slot[0]
                slot[1] += function.get("name") or ""
                slot[2] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"content": content, "tool_calls": [tuple(calls[i]) for i in sorted(calls)], "finish_reason": finish}


def usage_numbers(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
    }


def our_usage_numbers(usage: providers.Usage | None) -> dict[str, int]:
    assert usage is not None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_prompt_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def sdk_stream_usage(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where each SDK exposes stream usage: top-level `usage`, or Groq's `x_groq.usage`."""
    for chunk in reversed(chunks):
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
        if usage:
            return usage  # type: ignore[no-any-return]
    return None


# --- the oracles ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ORACLES))
async def test_non_streamed_answer_matches_the_official_sdk(kind: str, serve: Callable[..., None]) -> None:
    oracle = ORACLES[kind]
    serve(oracle, json_bytes(200, NON_STREAM[kind]))

    official = await oracle.make_sdk().chat.completions.create(**body(stream=False))
    async with httpx2.AsyncClient(verify=_TLS) as client:
        ours = await adapter(oracle).complete(
            client, adapter(oracle).prepare(body(stream=False), stream=False), deadlines()
        )

    sdk_data, our_data = official.model_dump(), ours.completion.model_dump()
    assert answer_of_completion(sdk_data) == answer_of_completion(our_data) == expected_answer(kind)
    assert usage_numbers(sdk_data["usage"]) == our_usage_numbers(ours.usage) == EXPECTED_USAGE


@pytest.mark.parametrize("kind", list(ORACLES))
async def test_streamed_answer_matches_the_official_sdk(kind: str, serve: Callable[..., None]) -> None:
    oracle = ORACLES[kind]
    serve(oracle, sse_bytes(STREAM[kind]))

    sdk_stream = await oracle.make_sdk().chat.completions.create(**body(stream=True))
    sdk_chunks = [chunk.model_dump() async for chunk in sdk_stream]
    async with httpx2.AsyncClient(verify=_TLS) as client:
        provider = adapter(oracle)
        ours = await provider.stream(client, provider.prepare(body(stream=True), stream=True), deadlines())
        our_chunks = [chunk.model_dump() async for chunk in ours]

    assert len(sdk_chunks) == len(our_chunks)
    assert answer_of_chunks(sdk_chunks) == answer_of_chunks(our_chunks) == expected_answer(kind)
    assert usage_numbers(sdk_stream_usage(sdk_chunks)) == our_usage_numbers(ours.usage) == EXPECTED_USAGE
    assert ours.finish_reasons == {0: "tool_calls"} and ours.saw_token


# Recorded error responses: (id, provider, status, headers, body, SDK exception class name, our class)
ERRORS: list[tuple[str, str, int, dict[str, str], bytes, str, type[ProviderError]]] = [
    (
        "groq-429",
        "groq",
        429,
        {"retry-after": "7", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7.66s"},
        (
            b'{"error":{"message":"Rate limit reached for model `openai/gpt-oss-120b` in organization `org_01hx4kq0abcd` '
            b"service tier `on_demand` on tokens per minute (TPM): Limit 8000, Used 7936, Requested 812. Please try again "
            b'in 5.61s.","type":"tokens","code":"rate_limit_exceeded"}}'
        ),
        "RateLimitError",
        RateLimited,
    ),
    (
        "groq-400-context",
        "groq",
        400,
        {},
        (
            b'{"error":{"message":"Please reduce the length of the messages or completion.","type":"invalid_request_error",'
            b'"param":"messages","code":"context_length_exceeded"}}'
        ),
        "BadRequestError",
        ContextTooLong,
    ),
    (
        "groq-400-plain",
        "groq",
        400,
        {},
        b'{"error":{"message":"`logprobs` is not supported with this model","type":"invalid_request_error"}}',
        "BadRequestError",
        BadRequest,
    ),
    (
        "groq-401",
        "groq",
        401,
        {},
        b'{"error":{"message":"Invalid API Key","type":"invalid_request_error","code":"invalid_api_key"}}',
        "AuthenticationError",
        AuthFailed,
    ),
    (
        "groq-500",
        "groq",
        500,
        {},
        b'{"error":{"message":"Internal Server Error","type":"internal_server_error"}}',
        "InternalServerError",
        ServerError,
    ),
    (
        "groq-413",
        "groq",
        413,
        {},
        (
            b'{"error":{"message":"Request too large for model `openai/gpt-oss-20b` in organization `org_01hx4kq0abcd` '
            b"service tier `on_demand` on tokens per minute (TPM): Limit 6000, Requested 14368, please reduce your message "
            b'size and try again.","type":"tokens","code":"rate_limit_exceeded"}}'
        ),
        "APIStatusError",
        QuotaExceeded,
    ),
    (
        "groq-498",
        "groq",
        498,
        {},
        (
            b'{"error":{"message":"Flex tier capacity exceeded. Please try again later.","type":"capacity_exceeded",'
            b'"code":"capacity_exceeded"}}'
        ),
        "APIStatusError",
        Overloaded,
    ),
    (
        "cerebras-429",
        "cerebras",
        429,
        {"x-ratelimit-remaining-tokens-minute": "0", "x-ratelimit-reset-tokens-minute": "11.382867097854614"},
        b'{"message":"Rate limit exceeded","type":"rate_limit_error","param":null,"code":"rate_limit_error"}',
        "RateLimitError",
        RateLimited,
    ),
    (
        "cerebras-400-context",
        "cerebras",
        400,
        {},
        (
            b'{"message":"Please reduce the length of the messages or completion. Current length is 69553 while limit is '
            b'65536","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}'
        ),
        "BadRequestError",
        ContextTooLong,
    ),
    (
        "cerebras-401",
        "cerebras",
        401,
        {},
        b'{"message":"Wrong API Key","type":"invalid_request_error","param":"api_key","code":"wrong_api_key"}',
        "AuthenticationError",
        AuthFailed,
    ),
    (
        "cerebras-402",
        "cerebras",
        402,
        {},
        b'{"message":"Payment required","type":"payment_required_error","param":null,"code":"payment_required"}',
        "APIStatusError",
        QuotaExceeded,
    ),
    (
        "cerebras-500",
        "cerebras",
        500,
        {},
        b'{"message":"Internal server error","type":"internal_server_error","param":null,"code":"internal_error"}',
        "InternalServerError",
        ServerError,
    ),
]


@pytest.mark.parametrize(
    ("kind", "status", "headers", "raw", "sdk_class", "our_class"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_error_class_matches_the_official_sdk(
    kind: str,
    status: int,
    headers: dict[str, str],
    raw: bytes,
    sdk_class: str,
    our_class: type[ProviderError],
    stream: bool,
    serve: Callable[..., None],
) -> None:
    oracle = ORACLES[kind]
    serve(oracle, json_bytes(status, raw, headers))

    with pytest.raises(oracle.sdk_module.APIStatusError) as sdk_caught:
        await oracle.make_sdk().chat.completions.create(**body(stream=stream))
    with pytest.raises(ProviderError) as our_caught:
        provider = adapter(oracle)
        async with httpx2.AsyncClient(verify=_TLS) as client:
            if stream:
                await provider.stream(client, provider.prepare(body(stream=True), stream=True), deadlines())
            else:
                await provider.complete(client, provider.prepare(body(stream=False), stream=False), deadlines())

    sdk_error, ours = sdk_caught.value, our_caught.value
    assert type(sdk_error) is getattr(oracle.sdk_module, sdk_class)
    assert type(ours) is our_class
    assert sdk_error.status_code == ours.status_code == status
    sent_message = json.loads(raw).get("error", json.loads(raw))["message"]
    assert sent_message in sdk_error.message and sent_message in ours.message
    for name, value in headers.items():
        assert sdk_error.response.headers[name] == ours.headers[name] == value


async def test_cerebras_mid_stream_error_frame_matches_the_official_sdk(serve: Callable[..., None]) -> None:
    """HTTP 200, one token, then an in-band error whose real status is in `status_code`."""
    oracle = ORACLES["cerebras"]
    raw = (
        b"data: " + _CEREBRAS_CHUNK + b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Check"}}]}\n\n'
        b'data: {"error":{"id":"","message":"Tokens per minute limit exceeded - too many tokens processed.",'
        b'"type":"too_many_tokens_error","param":"quota","code":"token_quota_exceeded"},"status_code":429}\n\n'
    )
    serve(oracle, sse_bytes(raw, pieces=3))

    sdk_seen: list[Any] = []
    with pytest.raises(cerebras_sdk.RateLimitError) as sdk_caught:
        async for chunk in await oracle.make_sdk().chat.completions.create(**body(stream=True)):
            sdk_seen.append(chunk)
    our_seen: list[Any] = []
    provider = adapter(oracle)
    async with httpx2.AsyncClient(verify=_TLS) as client:
        stream = await provider.stream(client, provider.prepare(body(stream=True), stream=True), deadlines())
        with pytest.raises(RateLimited) as our_caught:
            async for chunk in stream:
                our_seen.append(chunk)

    assert len(sdk_seen) == len(our_seen) == 1
    assert sdk_caught.value.status_code == our_caught.value.status_code == 429
    assert "Tokens per minute limit exceeded" in our_caught.value.message


async def test_both_mocks_intercept_their_own_stack(httpx2_mock: respx.Router, sdk_mock: respx.Router) -> None:
    """Guard for the harness itself: the SDK's httpx never reaches httpx2_mock, and vice versa."""
    oracle = ORACLES["groq"]
    sdk_route = sdk_mock.post(oracle.url).mock(side_effect=json_bytes(200, NON_STREAM["groq"]))
    our_route = httpx2_mock.post(oracle.url).mock(side_effect=json_bytes(200, NON_STREAM["groq"]))

    await oracle.make_sdk().chat.completions.create(**body(stream=False))
    assert (sdk_route.call_count, our_route.call_count) == (1, 0)
    assert sdk_route.calls.last.request.headers["user-agent"].startswith("AsyncGroq/Python")

    async with httpx2.AsyncClient(verify=_TLS) as client:
        await adapter(oracle).complete(client, body(stream=False), deadlines())
    assert (sdk_route.call_count, our_route.call_count) == (1, 1)
    assert our_route.calls.last.request.headers["user-agent"].startswith("python-httpx2/")
