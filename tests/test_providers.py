"""Provider adapters against recorded wire bytes (respx over httpx2; nothing leaves the process).

Each provider's bodies, headers and SSE framing are the ones documented in
/work/shared/providers.md. What is checked is what a caller of the router depends on:
the answer and its usage come out right for every backend kind, every failure lands in the
right class of the taxonomy (with the provider's wait hint), streams end promptly and
honestly, and the API key never leaks into errors.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpcore2
import httpx
import httpx2
import openai
import pytest
import respx

import providers
from providers import (
    AuthFailed,
    BadRequest,
    ChunkStream,
    Completed,
    ConnectionFailed,
    ContextTooLong,
    Deadlines,
    ModelNotFound,
    OpenAICompatible,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    RateLimitWindow,
    ServerError,
    StreamBroken,
    Unsupported,
    Usage,
    parse_duration,
    parse_rate_limits,
    parse_retry_after,
)
from router.config import load_config
from router.errors import to_caller_error
from router.path.pipeline import RouteTable

pytestmark = pytest.mark.anyio

KEY = "test-key-5f1e9c7a0b3d"
KINDS = ["deepseek", "groq", "cerebras", "vllm", "llamacpp", "openai"]
HOSTED = ["deepseek", "groq", "cerebras"]
# Hosted kinds are built without a base_url, so these are their defaults; self-hosted ones get a test host.
BASE_URL: dict[str, str | None] = {
    "deepseek": None,
    "groq": None,
    "cerebras": None,
    "vllm": "http://vllm.test:8000/v1",
    "llamacpp": "http://llama.test:8080/v1",
    "openai": "https://gateway.test/v1/",  # a trailing slash must not double up in the path
}
URL = {
    "deepseek": "https://api.deepseek.com/chat/completions",
    "groq": "https://api.groq.com/openai/v1/chat/completions",
    "cerebras": "https://api.cerebras.ai/v1/chat/completions",
    "vllm": "http://vllm.test:8000/v1/chat/completions",
    "llamacpp": "http://llama.test:8080/v1/chat/completions",
    "openai": "https://gateway.test/v1/chat/completions",
}
BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- helpers -------------------------------------------------------------------------------

_TLS = ssl.create_default_context()  # built once: a fresh httpx2 client would spend ~40 ms loading CA certs


def http_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(verify=_TLS)


def adapter(kind: str, *, key: str | None = KEY) -> OpenAICompatible:
    return providers.PROVIDERS[kind](base_url=BASE_URL[kind], api_key=key, name=kind)


def deadlines(*, first_token_s: float = 5, stall_s: float = 5, total_s: float = 10) -> Deadlines:
    now = anyio.current_time()
    return Deadlines(connect_s=1, first_token_at=now + first_token_s, stall_s=stall_s, total_at=now + total_s)


async def complete(provider: OpenAICompatible, body: dict[str, Any] = BODY) -> Completed:
    async with http_client() as client:
        return await provider.complete(client, provider.prepare(body, stream=False), deadlines())


async def open_stream(
    provider: OpenAICompatible, client: httpx2.AsyncClient, body: dict[str, Any] = BODY, **limits: float
) -> ChunkStream:
    prepared = provider.prepare({**body, "stream": True}, stream=True)
    return await provider.stream(client, prepared, deadlines(**limits))


async def drain(
    provider: OpenAICompatible, body: dict[str, Any] = BODY, **limits: float
) -> tuple[ChunkStream, list[Any]]:
    """Open a stream and read it to the end (or to the error it raises)."""
    async with http_client() as client:
        stream = await open_stream(provider, client, body, **limits)
        return stream, [chunk async for chunk in stream]


def completion(message: dict[str, Any], usage: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1764460800,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": usage,
        **extra,
    }


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk; `delta=None` gives the usage-only chunk (empty choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chunk-1",
        "object": "chat.completion.chunk",
        "created": 1764460800,
        "model": "m",
        "choices": choices,
        **extra,
    }


HANG = object()
"""In a stream script: stop sending but keep the connection open (until the client gives up)."""


def sse_response(
    *script: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Callable[..., httpx.Response]:
    """A respx side effect streaming `script`: dicts are `data:` events, bytes raw, numbers pauses."""

    async def body() -> AsyncIterator[bytes]:
        for part in script:
            if part is HANG:
                await anyio.sleep(3600)
            elif isinstance(part, (int, float)):
                await anyio.sleep(part)
            elif isinstance(part, dict):
                yield b"data: " + json.dumps(part).encode() + b"\n\n"
            else:
                yield part

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"content-type": "text/event-stream", **(headers or {})}, content=body())

    return respond


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Callable[..., httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        if isinstance(body, (bytes, str)):
            return httpx.Response(status, headers=headers or {}, content=body)
        return httpx.Response(status, headers=headers or {}, json=body)

    return respond


DONE = b"data: [DONE]\n\n"


def text_of(chunks: list[Any], field: str = "content") -> str:
    out = []
    for c in chunks:
        for choice in c.choices:
            value = getattr(choice.delta, field, None)
            if value is None and choice.delta.model_extra:
                value = choice.delta.model_extra.get(field)
            out.append(value or "")
    return "".join(out)


# --- success, non-streamed -----------------------------------------------------------------

# kind → (message fields, usage as the provider sends it, extra top-level fields, expected Usage)
NON_STREAM: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], Usage]] = {
    "deepseek": (
        {"content": "Hello", "reasoning_content": "The user greets."},
        {
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "total_tokens": 42,
            "prompt_cache_hit_tokens": 24,
            "prompt_cache_miss_tokens": 6,
            "completion_tokens_details": {"reasoning_tokens": 7},
        },
        {},
        Usage(30, 12, 42, cached_prompt_tokens=24, reasoning_tokens=7),
    ),
    "groq": (
        {"content": "Hello", "reasoning": "The user greets."},
        {
            "queue_time": 0.02,
            "prompt_tokens": 30,
            "prompt_time": 0.001,
            "completion_tokens": 12,
            "completion_time": 0.01,
            "total_tokens": 42,
            "total_time": 0.011,
            "prompt_tokens_details": {"cached_tokens": 16},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
        {"x_groq": {"id": "req_01kabc"}, "usage_breakdown": None},
        Usage(30, 12, 42, cached_prompt_tokens=16, reasoning_tokens=5),
    ),
    "cerebras": (
        {"content": "Hello", "reasoning": "The user greets."},
        {
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 4},
        },
        {
            "time_info": {
                "queue_time": 0.0001,
                "prompt_time": 0.001,
                "completion_time": 0.004,
                "total_time": 0.006,
                "created": 1764460800.1,
            }
        },
        Usage(30, 12, 42, cached_prompt_tokens=0, reasoning_tokens=4),
    ),
    "vllm": (
        {"content": "Hello", "reasoning": "The user greets.", "tool_calls": []},
        {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42, "prompt_tokens_details": None},
        {"prompt_logprobs": None, "kv_transfer_params": None},
        Usage(30, 12, 42),
    ),
    "llamacpp": (
        {"content": "Hello", "reasoning_content": "The user greets."},
        {
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 29},
        },
        {"timings": {"cache_n": 29, "prompt_n": 1, "prompt_ms": 3.1, "predicted_n": 12, "predicted_ms": 80.2}},
        Usage(30, 12, 42, cached_prompt_tokens=29),
    ),
    "openai": (
        {"content": "Hello"},
        {
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        {},
        Usage(30, 12, 42, cached_prompt_tokens=8),
    ),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_complete_returns_content_and_normalised_usage(kind: str, httpx2_mock: respx.Router) -> None:
    message, usage, extra, expected = NON_STREAM[kind]
    route = httpx2_mock.post(URL[kind]).mock(side_effect=json_response(200, completion(message, usage, **extra)))

    done = await complete(adapter(kind))

    assert done.completion.choices[0].message.content == "Hello"
    assert done.completion.choices[0].finish_reason == "stop"
    assert done.usage == expected
    sent = json.loads(route.calls.last.request.content)
    assert sent["messages"] == BODY["messages"] and "stream_options" not in sent


async def test_deepseek_blank_keepalive_lines_before_a_non_streamed_body_are_ignored(httpx2_mock: respx.Router) -> None:
    """While queued, DeepSeek sends empty lines ahead of the JSON body."""
    message, usage, _, expected = NON_STREAM["deepseek"]
    raw = b"\n\n\n" + json.dumps(completion(message, usage)).encode()
    httpx2_mock.post(URL["deepseek"]).mock(side_effect=json_response(200, raw))

    done = await complete(adapter("deepseek"))

    assert done.completion.choices[0].message.content == "Hello"
    assert done.usage == expected


@pytest.mark.parametrize("kind", HOSTED)
async def test_hosted_kinds_use_their_default_base_url_and_bearer_key(kind: str, httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(URL[kind]).mock(side_effect=json_response(200, completion({"content": "ok"}, None)))

    await complete(adapter(kind))

    assert route.call_count == 1
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("kind", HOSTED)
async def test_hosted_kind_without_a_key_fails_before_sending(kind: str, httpx2_mock: respx.Router) -> None:
    with pytest.raises(AuthFailed, match=providers.PROVIDERS[kind].api_key_env or "no API key"):
        await complete(adapter(kind, key=None))
    assert httpx2_mock.calls.call_count == 0


@pytest.mark.parametrize("kind", ["vllm", "llamacpp", "openai"])
async def test_self_hosted_kinds_send_a_key_only_when_configured(kind: str, httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(URL[kind]).mock(side_effect=json_response(200, completion({"content": "ok"}, None)))

    await complete(adapter(kind, key=None))
    await complete(adapter(kind))

    without, with_key = route.calls[0].request, route.calls[1].request
    assert "authorization" not in without.headers
    assert with_key.headers["authorization"] == f"Bearer {KEY}"


def test_openai_kind_requires_a_base_url() -> None:
    with pytest.raises(ValueError, match="base_url"):
        providers.PROVIDERS["openai"](api_key=KEY)


def _config(backend: dict[str, Any]) -> dict[str, Any]:
    return {"backends": {"b": backend}, "models": {"fast": {"deployments": [{"backend": "b", "model": "m"}]}}}


async def test_key_is_read_from_the_backend_config(httpx2_mock: respx.Router) -> None:
    config = load_config(_config({"provider": "groq", "api_key": "${MY_GROQ_KEY}"}), env={"MY_GROQ_KEY": KEY})
    route = httpx2_mock.post(URL["groq"]).mock(side_effect=json_response(200, completion({"content": "ok"}, None)))

    await complete(RouteTable(config).adapters["b"])

    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(config) and KEY not in str(config.backends)


async def test_key_falls_back_to_the_provider_env_var(
    httpx2_mock: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CEREBRAS_API_KEY", KEY)
    route = httpx2_mock.post(URL["cerebras"]).mock(side_effect=json_response(200, completion({"content": "ok"}, None)))

    await complete(RouteTable(load_config(_config({"provider": "cerebras"}), env={})).adapters["b"])

    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


# --- success, streamed ---------------------------------------------------------------------

USAGE_12_5 = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
# kind → (SSE script whose content is "Hello", expected reasoning (delta field, text), expected Usage)
STREAMS: dict[str, tuple[list[Any], tuple[str, str] | None, Usage]] = {
    "deepseek": (
        [
            b": keep-alive\n\n",
            b": keep-alive\n\n",
            chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
            chunk({"reasoning_content": "Greeting."}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({"content": ""}, "stop"),
            chunk(
                None,
                usage={
                    **USAGE_12_5,
                    "prompt_cache_hit_tokens": 8,
                    "prompt_cache_miss_tokens": 4,
                    "prompt_tokens_details": {"cached_tokens": 8},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                },
            ),
            DONE,
        ],
        ("reasoning_content", "Greeting."),
        Usage(12, 5, 17, cached_prompt_tokens=8, reasoning_tokens=2),
    ),
    "groq": (
        [
            chunk({"role": "assistant", "content": ""}, x_groq={"id": "req_01kabc"}),
            chunk({"reasoning": "Greeting."}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk(
                {},
                "stop",
                x_groq={
                    "id": "req_01kabc",
                    "usage": {
                        "queue_time": 0.05,
                        "prompt_tokens": 12,
                        "prompt_time": 0.002,
                        "completion_tokens": 5,
                        "completion_time": 0.01,
                        "total_tokens": 17,
                        "total_time": 0.012,
                        "prompt_tokens_details": {"cached_tokens": 6},
                        "completion_tokens_details": {"reasoning_tokens": 2},
                    },
                },
            ),
            DONE,
        ],
        ("reasoning", "Greeting."),
        Usage(12, 5, 17, cached_prompt_tokens=6, reasoning_tokens=2),
    ),
    "cerebras": (
        [
            chunk({"role": "assistant"}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk(
                {},
                "stop",
                usage={**USAGE_12_5, "prompt_tokens_details": {"cached_tokens": 0}},
                time_info={
                    "queue_time": 0.0002,
                    "prompt_time": 0.001,
                    "completion_time": 0.002,
                    "total_time": 0.004,
                    "created": 1764460800.2,
                },
            ),
            DONE,
        ],
        None,
        Usage(12, 5, 17),
    ),
    "vllm": (
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning": "Greeting."}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({"content": ""}, "stop"),
            chunk(None, usage=USAGE_12_5),
            DONE,
        ],
        ("reasoning", "Greeting."),
        Usage(12, 5, 17),
    ),
    "llamacpp": (
        [
            b":\n\n",
            chunk({"role": "assistant", "content": None}),
            chunk({"reasoning_content": "Greeting."}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop", timings={"cache_n": 3, "prompt_n": 9, "predicted_n": 5, "predicted_ms": 40.0}),
            chunk(None, usage={**USAGE_12_5, "prompt_tokens_details": {"cached_tokens": 3}}),
            DONE,
        ],
        ("reasoning_content", "Greeting."),
        Usage(12, 5, 17, cached_prompt_tokens=3),
    ),
    "openai": (
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            chunk(None, usage=USAGE_12_5),
            DONE,
        ],
        None,
        Usage(12, 5, 17),
    ),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_yields_content_and_usage(kind: str, httpx2_mock: respx.Router) -> None:
    script, reasoning, expected = STREAMS[kind]
    route = httpx2_mock.post(URL[kind]).mock(side_effect=sse_response(*script))

    stream, chunks = await drain(adapter(kind))

    assert text_of(chunks) == "Hello"
    if reasoning:
        assert text_of(chunks, reasoning[0]) == reasoning[1]
    assert stream.usage == expected
    assert stream.finish_reasons == {0: "stop"} and stream.saw_token
    request = route.calls.last.request
    assert request.headers["accept"] == "text/event-stream"
    assert json.loads(request.content)["stream_options"] == {"include_usage": True}


async def test_stream_keeps_callers_stream_options(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(URL["vllm"]).mock(side_effect=sse_response(*STREAMS["vllm"][0]))

    await drain(adapter("vllm"), {**BODY, "stream_options": {"continuous_usage_stats": True}})

    assert json.loads(route.calls.last.request.content)["stream_options"] == {
        "continuous_usage_stats": True,
        "include_usage": True,
    }


# --- failures: HTTP status + body → taxonomy ---------------------------------------------

GROQ_429_TPD = (
    "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01hx4kq0abcd` service tier "
    "`on_demand` on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. Please try again in 9m38.016s. "
    "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
)
GROQ_413 = (
    "Request too large for model `openai/gpt-oss-20b` in organization `org_01hx4kq0abcd` service tier `on_demand` "
    "on tokens per minute (TPM): Limit 6000, Requested 14368, please reduce your message size and try again."
)
DEEPSEEK_CONTEXT = (
    "This model's maximum context length is 131072 tokens. However, you requested 131134 tokens (122942 in the "
    "messages, 8192 in the completion). Please reduce the length of the messages or completion."
)
VLLM_CONTEXT = (
    "This model's maximum context length is 32768 tokens. However, your prompt contains 40001 input tokens, which "
    "exceeds this limit even without any output tokens. Please reduce the length of the input prompt. "
    "(parameter=input_tokens, value=40001)"
)


def err(message: str, type_: str | None = None, code: Any = None, **more: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": more.pop("param", None), "code": code, **more}}


# (test id, kind, status, response headers, body, expected class, expected retry_after)
FAILURES: list[tuple[str, str, int, dict[str, str], Any, type[ProviderError], float | None]] = [
    # rate limits and their wait hints
    (
        "groq-429-message-hint",
        "groq",
        429,
        {},
        err(GROQ_429_TPD, "tokens", "rate_limit_exceeded"),
        RateLimited,
        578.016,
    ),
    (
        "groq-429-retry-after-header-wins",
        "groq",
        429,
        {"retry-after": "2", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7.66s"},
        err(GROQ_429_TPD, "tokens", "rate_limit_exceeded"),
        RateLimited,
        2.0,
    ),
    (
        "openai-429-retry-after-ms",
        "openai",
        429,
        {"retry-after-ms": "1500", "retry-after": "2"},
        err("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        RateLimited,
        1.5,
    ),
    (
        "deepseek-429-concurrency",
        "deepseek",
        429,
        {},
        err(
            "Your current concurrency is 40, which exceeds your concurrency limit of 39 based on your remaining "
            "balance. Please top up your balance to restore your concurrency.",
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        RateLimited,
        None,
    ),
    (
        "cerebras-429",
        "cerebras",
        429,
        {"retry-after": "3", "x-ratelimit-remaining-tokens-minute": "0"},
        err("Rate limit exceeded", "rate_limit_error", "rate_limit_error"),
        RateLimited,
        3.0,
    ),
    # quota: can never succeed on this account
    (
        "deepseek-402",
        "deepseek",
        402,
        {},
        err("Insufficient Balance", "unknown_error", "invalid_request_error"),
        QuotaExceeded,
        None,
    ),
    (
        "cerebras-402",
        "cerebras",
        402,
        {},
        err("Payment required", "payment_required", "payment_required"),
        QuotaExceeded,
        None,
    ),
    ("groq-413-tpm", "groq", 413, {}, err(GROQ_413, "tokens", "rate_limit_exceeded"), QuotaExceeded, None),
    # overloaded: up, but no capacity now
    (
        "groq-498-flex",
        "groq",
        498,
        {},
        err("Flex tier capacity exceeded. Please try again later.", "capacity_exceeded", "capacity_exceeded"),
        Overloaded,
        None,
    ),
    (
        "vllm-503-queue-full",
        "vllm",
        503,
        {},
        err(
            "The engine is currently busy and cannot accept new requests. Please try again later or on a different "
            "instance.",
            "ServiceUnavailableError",
            503,
        ),
        Overloaded,
        None,
    ),
    (
        "llamacpp-503-loading",
        "llamacpp",
        503,
        {},
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
        Overloaded,
        None,
    ),
    (
        "deepseek-503",
        "deepseek",
        503,
        {},
        err("Server overloaded", "service_unavailable_error", None),
        Overloaded,
        None,
    ),
    # context overflow, one signature per provider
    (
        "deepseek-context",
        "deepseek",
        400,
        {},
        err(DEEPSEEK_CONTEXT, "invalid_request_error", "invalid_request_error"),
        ContextTooLong,
        None,
    ),
    (
        "groq-context",
        "groq",
        400,
        {},
        err(
            "Please reduce the length of the messages or completion.",
            "invalid_request_error",
            "context_length_exceeded",
            param="messages",
        ),
        ContextTooLong,
        None,
    ),
    (
        "cerebras-context",
        "cerebras",
        400,
        {},
        err(
            "Please reduce the length of the messages or completion. Current length is 69553 while limit is 65536",
            "invalid_request_error",
            "context_length_exceeded",
        ),
        ContextTooLong,
        None,
    ),
    (
        "vllm-context",
        "vllm",
        400,
        {},
        err(VLLM_CONTEXT, "BadRequestError", 400, param="input_tokens"),
        ContextTooLong,
        None,
    ),
    (
        "vllm-context-old-flat",
        "vllm",
        400,
        {},
        {
            "object": "error",
            "message": "Input length (40001) exceeds model's maximum context length (32768).",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        ContextTooLong,
        None,
    ),
    (
        "llamacpp-context",
        "llamacpp",
        400,
        {},
        {
            "error": {
                "code": 400,
                "message": "request (9000 tokens) exceeds the available context size (4096 tokens), try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 9000,
                "n_ctx": 4096,
            }
        },
        ContextTooLong,
        None,
    ),
    (
        "llama-cpp-python-context",
        "openai",
        400,
        {},
        err(
            "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens (2000 in the "
            "messages, 100 in the completion). Please reduce the length of the messages or completion.",
            "invalid_request_error",
            "context_length_exceeded",
            param="messages",
        ),
        ContextTooLong,
        None,
    ),
    # plain bad requests stay bad requests
    (
        "deepseek-400-reasoning",
        "deepseek",
        400,
        {},
        err(
            "The reasoning_content in the thinking mode must be passed back to the API.",
            "invalid_request_error",
            "invalid_request_error",
        ),
        BadRequest,
        None,
    ),
    (
        "groq-400-name",
        "groq",
        400,
        {},
        err(
            "'messages.0' : for 'role:user' the following must be satisfied[('messages.0.name' : property 'name' "
            "is unsupported)]",
            "invalid_request_error",
            None,
        ),
        BadRequest,
        None,
    ),
    # auth
    (
        "deepseek-401",
        "deepseek",
        401,
        {},
        err("Authentication Fails, Your api key: ****9c7a is invalid", "authentication_error", "invalid_request_error"),
        AuthFailed,
        None,
    ),
    ("groq-401", "groq", 401, {}, err("Invalid API Key", "invalid_request_error", "invalid_api_key"), AuthFailed, None),
    (
        "cerebras-401",
        "cerebras",
        401,
        {},
        err("Wrong API Key", "invalid_request_error", "wrong_api_key"),
        AuthFailed,
        None,
    ),
    ("vllm-401-bare-string", "vllm", 401, {}, {"error": "Unauthorized"}, AuthFailed, None),
    (
        "llamacpp-401",
        "llamacpp",
        401,
        {},
        {"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}},
        AuthFailed,
        None,
    ),
    (
        "openai-403",
        "openai",
        403,
        {},
        err("Project does not have access", "invalid_request_error", None),
        AuthFailed,
        None,
    ),
    # model not found
    (
        "vllm-404",
        "vllm",
        404,
        {},
        err("The model `llama-9` does not exist.", "NotFoundError", 404, param="model"),
        ModelNotFound,
        None,
    ),
    (
        "groq-404",
        "groq",
        404,
        {},
        err(
            "The model `llama-3.3-70b-versatile` has been decommissioned and is no longer supported.",
            "invalid_request_error",
            "model_decommissioned",
        ),
        ModelNotFound,
        None,
    ),
    (
        "cerebras-404",
        "cerebras",
        404,
        {},
        err(
            "Model llama-3.3-70b does not exist or you do not have access to it.", "not_found_error", "model_not_found"
        ),
        ModelNotFound,
        None,
    ),
    (
        "llamacpp-404",
        "llamacpp",
        404,
        {},
        {"error": {"code": 404, "message": "model not found", "type": "not_found_error"}},
        ModelNotFound,
        None,
    ),
    (
        "deepseek-404",
        "deepseek",
        404,
        {},
        err("Model Not Exist", "invalid_request_error", "invalid_request_error"),
        ModelNotFound,
        None,
    ),
    # transient server errors
    ("deepseek-500", "deepseek", 500, {}, err("Server Error", "server_error", None), ServerError, None),
    ("groq-500", "groq", 500, {}, err("Internal Server Error", "internal_server_error", None), ServerError, None),
    ("groq-502-html", "groq", 502, {}, b"<html><body><h1>502 Bad Gateway</h1></body></html>", ServerError, None),
    (
        "cerebras-500",
        "cerebras",
        500,
        {},
        err("Internal server error", "internal_server_error", None),
        ServerError,
        None,
    ),
    (
        "vllm-500",
        "vllm",
        500,
        {},
        err("EngineCore encountered an issue.", "InternalServerError", 500),
        ServerError,
        None,
    ),
    (
        "llamacpp-500",
        "llamacpp",
        500,
        {},
        {"error": {"code": 500, "message": "failed to decode", "type": "server_error"}},
        ServerError,
        None,
    ),
    ("openai-500-empty", "openai", 500, {}, b"", ServerError, None),
]


@pytest.mark.parametrize(
    ("kind", "status", "headers", "body", "expected", "retry_after"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
async def test_error_responses_are_classified(
    kind: str,
    status: int,
    headers: dict[str, str],
    body: Any,
    expected: type[ProviderError],
    retry_after: float | None,
    httpx2_mock: respx.Router,
) -> None:
    httpx2_mock.post(URL[kind]).mock(side_effect=json_response(status, body, headers))

    with pytest.raises(ProviderError) as caught:
        await complete(adapter(kind))

    error = caught.value
    assert type(error) is expected
    assert error.status_code == status
    assert error.retry_after == pytest.approx(retry_after) if retry_after is not None else error.retry_after is None
    assert error.retryable is (expected in (RateLimited, Overloaded, ServerError))
    assert error.message.startswith(f"{kind}: ")
    for name, value in headers.items():  # rate-limit headers travel with the error
        assert error.headers[name] == value


async def test_an_error_opening_a_stream_is_classified_like_a_non_streamed_one(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["groq"]).mock(
        side_effect=json_response(
            429,
            err(GROQ_429_TPD, "tokens", "rate_limit_exceeded"),
            {"retry-after": "5", "x-ratelimit-reset-requests": "2m59.56s", "x-ratelimit-remaining-requests": "0"},
        )
    )

    with pytest.raises(RateLimited) as caught:
        await drain(adapter("groq"))

    assert caught.value.retry_after == 5.0
    assert parse_rate_limits(caught.value.headers).windows["requests"] == RateLimitWindow(None, 0.0, 179.56)


async def test_an_error_object_in_a_200_body_is_classified(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["vllm"]).mock(side_effect=json_response(200, err(VLLM_CONTEXT, "BadRequestError", 400)))

    with pytest.raises(ContextTooLong):
        await complete(adapter("vllm"))


# --- failures: transport ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected", "retryable"),
    [
        (httpcore2.ConnectError("[Errno 111] Connection refused"), ConnectionFailed, False),
        (httpcore2.ReadError("[Errno 104] Connection reset by peer"), ConnectionFailed, True),
        (httpcore2.ConnectTimeout("timed out"), ProviderTimeout, False),
    ],
    ids=["refused", "reset", "connect-timeout"],
)
async def test_transport_failures(
    raised: Exception, expected: type[ProviderError], retryable: bool, httpx2_mock: respx.Router
) -> None:
    httpx2_mock.post(URL["vllm"]).mock(side_effect=raised)

    with pytest.raises(ProviderError) as caught:
        await complete(adapter("vllm"))

    assert type(caught.value) is expected
    assert caught.value.retryable is retryable
    # the httpx2 error (whose request holds the auth header) is neither the cause nor the context
    assert caught.value.__cause__ is None and caught.value.__context__ is None


# --- failures and endings of streams -------------------------------------------------------

TOKEN = chunk({"content": "Hel"})


async def test_cerebras_in_band_429_frame_on_a_200_stream_is_a_rate_limit(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["cerebras"]).mock(
        side_effect=sse_response(
            TOKEN,
            {
                "error": {
                    "id": "",
                    "code": "token_quota_exceeded",
                    "message": "Tokens per minute limit exceeded - too many tokens processed.",
                    "param": "quota",
                    "type": "too_many_tokens_error",
                },
                "status_code": 429,
            },
            DONE,
        )
    )

    with pytest.raises(RateLimited) as caught:
        await drain(adapter("cerebras"))

    assert caught.value.status_code == 429


@pytest.mark.parametrize(
    ("kind", "frame", "ends_with_done", "expected"),
    [
        ("vllm", err("EngineCore encountered an issue.", "InternalServerError", 500), True, ServerError),
        ("vllm", err("The engine is currently busy.", "ServiceUnavailableError", 503), True, Overloaded),
        (
            "llamacpp",
            {"error": {"code": 500, "message": "failed to decode the batch", "type": "server_error"}},
            False,
            ServerError,
        ),
        ("groq", err("stream stopped early", "internal_error", "internal_error"), True, StreamBroken),
    ],
    ids=["vllm-500", "vllm-503", "llamacpp-500", "untyped-error-frame"],
)
async def test_in_band_error_frames_are_classified(
    kind: str, frame: dict[str, Any], ends_with_done: bool, expected: type[ProviderError], httpx2_mock: respx.Router
) -> None:
    script = [TOKEN, frame] + ([DONE] if ends_with_done else [])
    httpx2_mock.post(URL[kind]).mock(side_effect=sse_response(*script))

    with pytest.raises(ProviderError) as caught:
        await drain(adapter(kind))

    assert type(caught.value) is expected


@pytest.mark.parametrize(
    "bad",
    [b'data: {"id": "chunk-1", "choices": [\n\n', b"data: 42\n\n", b'data: {"unexpected": true}\n\n'],
    ids=["truncated-json", "not-an-object", "no-choices"],
)
async def test_malformed_event_breaks_the_stream(bad: bytes, httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["openai"]).mock(side_effect=sse_response(TOKEN, bad, chunk({}, "stop"), DONE))

    with pytest.raises(StreamBroken, match=r"malformed|unexpected"):
        await drain(adapter("openai"))


async def test_eof_without_done_or_finish_reason_is_a_broken_stream(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["groq"]).mock(side_effect=sse_response(TOKEN, chunk({"content": "lo"})))

    with pytest.raises(StreamBroken, match="closed before the answer finished"):
        await drain(adapter("groq"))


async def test_done_before_any_finish_reason_is_a_broken_stream(httpx2_mock: respx.Router) -> None:
    """llama-cpp-python's server (interrupt_requests=True, its default) cuts a stream short with a
    well-formed `[DONE]` as soon as another request waits: no choice finished, so it is truncated."""
    httpx2_mock.post(URL["openai"]).mock(side_effect=sse_response(TOKEN, chunk({"content": "lo"}), DONE))

    with pytest.raises(StreamBroken, match="before the answer finished"):
        await drain(adapter("openai"))


async def test_connection_cut_mid_stream_is_a_broken_stream(httpx2_mock: respx.Router) -> None:
    async def cut() -> AsyncIterator[bytes]:
        yield b"data: " + json.dumps(TOKEN).encode() + b"\n\n"
        raise httpcore2.RemoteProtocolError("peer closed connection without sending complete message body")

    httpx2_mock.post(URL["deepseek"]).mock(return_value=httpx.Response(200, content=cut()))

    with pytest.raises(StreamBroken, match="stream cut"):
        await drain(adapter("deepseek"))


async def test_eof_after_finish_reason_without_done_ends_normally(httpx2_mock: respx.Router) -> None:
    """llama.cpp ends some streams without `[DONE]`; a finished answer is still a complete one."""
    httpx2_mock.post(URL["llamacpp"]).mock(
        side_effect=sse_response(TOKEN, chunk({"content": "lo"}, "length"), chunk(None, usage=USAGE_12_5))
    )

    stream, chunks = await drain(adapter("llamacpp"))

    assert text_of(chunks) == "Hello" and stream.finish_reasons == {0: "length"}
    assert stream.usage == Usage(12, 5, 17)


async def test_finished_stream_without_done_that_hangs_ends_promptly(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["deepseek"]).mock(
        side_effect=sse_response(TOKEN, chunk({"content": "lo"}, "stop"), chunk(None, usage=USAGE_12_5), HANG)
    )

    started = anyio.current_time()
    stream, chunks = await drain(adapter("deepseek"))

    assert anyio.current_time() - started < 0.5
    assert text_of(chunks) == "Hello" and stream.usage == Usage(12, 5, 17)


async def test_groq_final_chunk_with_usage_then_hang_ends_promptly(httpx2_mock: respx.Router) -> None:
    final = chunk({}, "stop", x_groq={"id": "req_1", "usage": USAGE_12_5})
    httpx2_mock.post(URL["groq"]).mock(side_effect=sse_response(TOKEN, final, HANG))

    started = anyio.current_time()
    stream, _ = await drain(adapter("groq"))

    assert anyio.current_time() - started < 0.5
    assert stream.usage == Usage(12, 5, 17)


async def test_keepalives_alone_hit_the_first_token_deadline(httpx2_mock: respx.Router) -> None:
    """DeepSeek's `: keep-alive` comments are not progress: they must not re-arm any timer."""
    keepalives = [b": keep-alive\n\n", 0.02] * 200  # ~4 s of comments, far past the deadline
    httpx2_mock.post(URL["deepseek"]).mock(
        side_effect=sse_response(chunk({"role": "assistant", "content": ""}), *keepalives, HANG)
    )

    started = anyio.current_time()
    with pytest.raises(ProviderTimeout, match="first token"):
        await drain(adapter("deepseek"), first_token_s=0.3, stall_s=0.1, total_s=10)

    assert 0.25 < anyio.current_time() - started < 1.0


async def test_stall_after_the_first_token_breaks_the_stream(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["vllm"]).mock(side_effect=sse_response(TOKEN, *[b":\n\n", 0.02] * 50, HANG))

    started = anyio.current_time()
    with pytest.raises(StreamBroken, match="stalled"):
        await drain(adapter("vllm"), first_token_s=5, stall_s=0.2, total_s=10)

    assert anyio.current_time() - started < 1.0


async def test_total_deadline_caps_a_slow_but_steady_stream(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["openai"]).mock(side_effect=sse_response(*[TOKEN, 0.05] * 100))

    with pytest.raises(ProviderTimeout, match="call deadline"):
        await drain(adapter("openai"), first_token_s=1, stall_s=1, total_s=0.3)


async def test_crlf_framing_and_ping_events_are_read(httpx2_mock: respx.Router) -> None:
    """llama-cpp-python's server (sse-starlette) separates events with CRLF and sends `: ping` comments."""
    events = [chunk({"role": "assistant"}), TOKEN, chunk({"content": "lo"}, "stop"), chunk(None, usage=USAGE_12_5)]
    raw = b": ping - 2026-11-30 12:00:00.000000+00:00\r\n\r\n"
    raw += b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events) + b"data: [DONE]\r\n\r\n"
    # served in 5-byte reads, so CR and LF of one separator often arrive in different reads
    httpx2_mock.post(URL["openai"]).mock(side_effect=sse_response(*(raw[i : i + 5] for i in range(0, len(raw), 5))))

    stream, chunks = await drain(adapter("openai"))

    assert text_of(chunks) == "Hello" and stream.usage == Usage(12, 5, 17)


@pytest.mark.httpx2(assert_all_called=False)  # respx records a call only once its response exists
async def test_no_response_headers_before_the_first_token_deadline(httpx2_mock: respx.Router) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(3600)
        raise AssertionError("unreachable")

    httpx2_mock.post(URL["groq"]).mock(side_effect=never)

    started = anyio.current_time()
    with pytest.raises(ProviderTimeout, match="no response headers"):
        await drain(adapter("groq"), first_token_s=0.2, total_s=10)
    assert anyio.current_time() - started < 1.0


# --- Groq's request dialect ----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"logprobs": True},
        {"top_logprobs": 3},
        {"top_logprobs": 0},
        {"logit_bias": {"1234": -100}},
        {"logit_bias": {}},
        {"n": 2},
    ],
    ids=["logprobs", "top_logprobs", "top_logprobs=0", "logit_bias", "empty-logit_bias", "n=2"],
)
def test_groq_refuses_fields_it_would_400_on(extra: dict[str, Any]) -> None:
    with pytest.raises(Unsupported) as caught:
        adapter("groq").prepare({**BODY, **extra}, stream=False)
    assert caught.value.status_code == 400 and not caught.value.retryable


def test_groq_drops_off_values_of_those_fields() -> None:
    """Groq 400s on these fields if present at all; `False`/`None` mean "off", so they are omitted."""
    body = {**BODY, "logprobs": False, "logit_bias": None, "n": 1}
    assert adapter("groq").prepare(body, stream=False) == {**BODY, "n": 1}


def test_groq_strips_message_names_without_touching_the_callers_body() -> None:
    messages = [
        {"role": "system", "content": "be brief", "name": "sys"},
        {"role": "user", "content": "hi", "name": "ann"},
    ]
    body = {**BODY, "messages": messages}

    prepared = adapter("groq").prepare(body, stream=True)

    assert prepared["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert messages[1]["name"] == "ann"  # the caller's objects are untouched
    assert prepared["stream_options"] == {"include_usage": True}


def test_other_kinds_pass_groq_only_restrictions_through() -> None:
    body = {**BODY, "logprobs": True, "n": 2, "messages": [{"role": "user", "content": "hi", "name": "ann"}]}
    for kind in ("deepseek", "cerebras", "vllm", "llamacpp", "openai"):
        assert adapter(kind).prepare(body, stream=False) == body


@pytest.mark.httpx2(assert_all_called=False)
async def test_router_sends_nothing_when_groq_refuses_a_field(httpx2_mock: respx.Router) -> None:
    from router.client import AsyncRouter

    route = httpx2_mock.post(URL["groq"]).mock(side_effect=json_response(200, completion({"content": "x"}, None)))
    config = load_config(_config({"provider": "groq", "api_key": KEY}), env={})

    async with AsyncRouter(config) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hi"}], logprobs=True
            )

    assert not route.called


# --- rate-limit headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2", 2.0),
        ("1.5", 1.5),
        ("7.66s", 7.66),
        ("2m59.56s", 179.56),
        ("577.5ms", 0.5775),
        ("1h2m3s", 3723.0),
        ("6m0s", 360.0),
        ("11.382867097854614", 11.382867097854614),
        ("soon", None),
        ("", None),
        ("5m-3s", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(httpx2.Headers({"Retry-After-Ms": "250"})) == 0.25
    assert parse_retry_after(httpx2.Headers({"retry-after": "30"})) == 30.0
    date = "Mon, 30 Nov 2026 12:00:30 GMT"
    now = 1796040000.0  # 2026-11-30 12:00:00 UTC
    assert parse_retry_after(httpx2.Headers({"retry-after": date}), now=now) == pytest.approx(30.0)
    assert parse_retry_after(httpx2.Headers({})) is None


GROQ_HEADERS = {
    "x-ratelimit-limit-requests": "14400",
    "x-ratelimit-limit-tokens": "18000",
    "x-ratelimit-remaining-requests": "14370",
    "x-ratelimit-remaining-tokens": "17997",
    "x-ratelimit-reset-requests": "2m59.56s",
    "x-ratelimit-reset-tokens": "7.66s",
}
CEREBRAS_HEADERS = {
    "x-ratelimit-limit-requests-day": "1000000000",
    "x-ratelimit-limit-tokens-minute": "1000000000",
    "x-ratelimit-remaining-requests-day": "999997455",
    "x-ratelimit-remaining-tokens-minute": "999998298",
    "x-ratelimit-reset-requests-day": "33011.382867097855",
    "x-ratelimit-reset-tokens-minute": "11.382867097854614",
    "X-Ratelimit-Limit-Requests-Minute": "120",
    "X-Ratelimit-Reset-Requests-Minute": "45.5",
}


@pytest.mark.parametrize(
    ("kind", "headers", "windows"),
    [
        (
            "groq",
            GROQ_HEADERS,
            {
                "requests": RateLimitWindow(14400, 14370, 179.56),
                "tokens": RateLimitWindow(18000, 17997, 7.66),
            },
        ),
        (
            "cerebras",
            CEREBRAS_HEADERS,
            {
                "requests-day": RateLimitWindow(1e9, 999997455, 33011.382867097855),
                "tokens-minute": RateLimitWindow(1e9, 999998298, 11.382867097854614),
                "requests-minute": RateLimitWindow(120, None, 45.5),
            },
        ),
        ("deepseek", {"x-request-id": "abc"}, {}),
    ],
)
async def test_rate_limit_headers_on_a_success_become_windows(
    kind: str, headers: dict[str, str], windows: dict[str, RateLimitWindow], httpx2_mock: respx.Router
) -> None:
    httpx2_mock.post(URL[kind]).mock(side_effect=json_response(200, completion({"content": "ok"}, None), headers))

    done = await complete(adapter(kind))

    assert done.rate_limits.windows == pytest.approx(windows) if windows else not done.rate_limits
    if kind == "groq":
        assert done.rate_limits.tightest("tokens") == RateLimitWindow(18000, 17997, 7.66)


async def test_rate_limit_headers_on_a_stream_become_windows(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(URL["groq"]).mock(side_effect=sse_response(*STREAMS["groq"][0], headers=GROQ_HEADERS))

    stream, _ = await drain(adapter("groq"))

    assert stream.rate_limits.windows["tokens"] == RateLimitWindow(18000, 17997, 7.66)


# --- what the caller sees --------------------------------------------------------------------

CALLER_ERRORS: list[tuple[ProviderError, type[openai.APIError], int | None]] = [
    (
        RateLimited("groq: slow down", status_code=429, retry_after=7.5, headers={"retry-after": "7.5"}),
        openai.RateLimitError,
        429,
    ),
    (ContextTooLong("deepseek: too long", status_code=400), openai.BadRequestError, 400),
    (Unsupported("groq does not accept `logprobs`", status_code=400), openai.BadRequestError, 400),
    (BadRequest("vllm: bad", status_code=422), openai.UnprocessableEntityError, 422),
    (AuthFailed("vllm: Unauthorized", status_code=401), openai.AuthenticationError, 401),
    (AuthFailed("openai: forbidden", status_code=403), openai.PermissionDeniedError, 403),
    (ModelNotFound("vllm: no such model", status_code=404), openai.NotFoundError, 404),
    (QuotaExceeded("deepseek: Insufficient Balance", status_code=402), openai.APIStatusError, 402),
    (Overloaded("vllm: busy", status_code=503), openai.InternalServerError, 503),
    (ServerError("groq: boom", status_code=500), openai.InternalServerError, 500),
    (ConnectionFailed("vllm: cannot connect"), openai.APIConnectionError, None),
    (ProviderTimeout("groq: no first token"), openai.APITimeoutError, None),
    (StreamBroken("groq: stream cut"), openai.APIError, None),
]


@pytest.mark.parametrize(
    ("failure", "expected", "status"),
    CALLER_ERRORS,
    ids=[f"{type(f).__name__}-{e.__name__}" for f, e, _ in CALLER_ERRORS],
)
def test_to_caller_error_gives_openai_exception_classes(
    failure: ProviderError, expected: type[openai.APIError], status: int | None
) -> None:
    error = to_caller_error(failure, [], None)

    assert isinstance(error, expected)
    assert failure.message in str(error)
    if status is not None:
        assert isinstance(error, openai.APIStatusError) and error.status_code == status
    else:
        assert not isinstance(error, openai.APIStatusError)
    if isinstance(failure, RateLimited):  # the wait hint reaches the caller both ways
        assert error.retry_after == 7.5  # type: ignore[attr-defined]
        assert error.response.headers["retry-after"] == "7.5"  # type: ignore[attr-defined]


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


async def test_the_api_key_never_shows_in_adapters_or_errors(httpx2_mock: respx.Router) -> None:
    groq = adapter("groq")
    assert KEY not in repr(groq) and KEY not in str(groq)
    httpx2_mock.post(URL["groq"]).mock(
        side_effect=json_response(401, err("Invalid API Key", "invalid_request_error", "invalid_api_key"))
    )
    httpx2_mock.post(URL["vllm"]).mock(side_effect=httpcore2.ConnectError("[Errno 111] Connection refused"))
    httpx2_mock.post(URL["cerebras"]).mock(side_effect=sse_response(TOKEN, b"data: {oops\n\n"))

    failures: list[ProviderError] = []
    for provider, call in ((groq, complete), (adapter("vllm"), complete), (adapter("cerebras"), drain)):
        with pytest.raises(ProviderError) as caught:
            await call(provider)
        failures.append(caught.value)

    for failure in failures:
        caller = to_caller_error(failure, [], None, url=URL["groq"])
        for shown in (*_chain(failure), caller):
            assert KEY not in str(shown) and KEY not in repr(shown)
        assert KEY not in str(failure.headers) and KEY not in str(failure.body)
        assert "authorization" not in caller.request.headers
        response = getattr(caller, "response", None)
        if response is not None:
            assert "authorization" not in response.request.headers
            assert KEY not in str(dict(response.headers))


# --- answers cut short while looking finished ----------------------------------------------


async def test_deepseek_insufficient_resource_is_not_a_finished_answer(httpx2_mock: respx.Router) -> None:
    """DeepSeek ends an answer it had to abandon with finish_reason `insufficient_system_resource`."""
    cut = completion({"role": "assistant", "content": "Hal"}, None)
    cut["choices"][0]["finish_reason"] = "insufficient_system_resource"
    httpx2_mock.post(URL["deepseek"]).mock(
        side_effect=[
            httpx.Response(200, json=cut),
            sse_response(TOKEN, chunk({}, "insufficient_system_resource"), DONE)(None),
        ]
    )
    with pytest.raises(ServerError, match="stopped the answer early"):
        await complete(adapter("deepseek"))
    with pytest.raises(ServerError, match="insufficient_system_resource"):
        await drain(adapter("deepseek"))


async def test_groq_x_groq_error_breaks_the_stream(httpx2_mock: respx.Router) -> None:
    stopped = chunk({}, None, x_groq={"id": "req_1", "error": "upstream model crashed"})
    httpx2_mock.post(URL["groq"]).mock(side_effect=sse_response(TOKEN, stopped, DONE))
    with pytest.raises(StreamBroken, match="upstream model crashed"):
        await drain(adapter("groq"))


async def test_error_field_inside_a_valid_chunk_is_not_dropped(httpx2_mock: respx.Router) -> None:
    bad = chunk({"content": ""}, None, error={"message": "engine died", "code": 500})
    httpx2_mock.post(URL["vllm"]).mock(side_effect=sse_response(TOKEN, bad, DONE))
    with pytest.raises(ServerError, match="engine died"):
        await drain(adapter("vllm"))
