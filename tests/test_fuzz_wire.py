"""Bad upstream bytes never escape as a crash (property-based, respx over httpx2; nothing leaves the process).

Every adapter's non-streamed parsing and SSE stream parsing is fed malformed wire: invalid JSON,
invalid UTF-8, truncated events, missing or wrongly typed fields, negative or absent usage,
unknown finish reasons, error objects inside a 200. Each must end as a typed failure — a
`ProviderError` at the adapter, an `openai.APIError` through the router — or as an answer a
caller can use; never a `KeyError`/`TypeError`/`ValueError`/`UnicodeDecodeError`/pydantic error,
and never a stream that did not finish yet ends cleanly.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import openai
import pytest
import pytest_httpx2._plugin  # noqa: F401  registers respx's httpcore2 mocker outside the fixture too
import respx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from providers import Completed, ProviderError, ServerError, Usage
from router import AsyncRouter
from tests.conftest import mocked_backends
from tests.test_providers import BASE_URL, KINDS, URL, adapter, chunk, complete, completion, drain

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUTER_FUZZ = settings(FUZZ, max_examples=100)
BIG_LINE = 10 * 1024 * 1024

# --- the wire, well-formed then broken -------------------------------------------------------

ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["abort", "error", "tool_calls", "content_filter", "length", "insufficient_system_resource"]),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.sampled_from(["message", "code", "type", "a"]), st.integers(-1, 600), max_size=2),
)
"""Values a broken upstream might put where a field belongs."""

USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 2,
    "total_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 1},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
COMPLETION_PATHS: list[tuple[Any, ...]] = [
    ("id",), ("created",), ("model",), ("object",), ("choices",), ("choices", 0), ("choices", 0, "index"),
    ("choices", 0, "message"), ("choices", 0, "message", "content"), ("choices", 0, "message", "role"),
    ("choices", 0, "message", "tool_calls"), ("choices", 0, "finish_reason"), ("usage",),
    ("usage", "prompt_tokens"), ("usage", "completion_tokens"), ("usage", "total_tokens"),
    ("usage", "prompt_tokens_details"), ("usage", "prompt_tokens_details", "cached_tokens"),
    ("usage", "completion_tokens_details"), ("usage", "prompt_cache_hit_tokens"), ("x_groq",), ("x_groq", "usage"),
    ("error",),
]  # fmt: skip
CHUNK_PATHS: list[tuple[Any, ...]] = [
    ("id",), ("created",), ("choices",), ("choices", 0), ("choices", 0, "index"), ("choices", 0, "delta"),
    ("choices", 0, "delta", "content"), ("choices", 0, "delta", "tool_calls"), ("choices", 0, "delta", "role"),
    ("choices", 0, "finish_reason"), ("usage",), ("usage", "prompt_tokens"), ("usage", "completion_tokens"),
    ("usage", "prompt_tokens_details"), ("x_groq",), ("x_groq", "usage"), ("x_groq", "error"), ("error",),
]  # fmt: skip


def good_completion() -> dict[str, Any]:
    return completion({"content": "Hello"}, copy.deepcopy(USAGE))


def good_events() -> list[dict[str, Any]]:
    """A stream as providers send it: role, two tokens, the finish, the usage chunk."""
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        chunk(None, usage=copy.deepcopy(USAGE)),
    ]


def mutate(data: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> None:
    """Set (or delete) `path` in `data`, creating parents as dicts; a parent of the wrong type is replaced."""
    node: Any = data
    for key, below in itertools.pairwise(path):
        child = node[key] if _has(node, key) else None
        if not (isinstance(child, dict) or (isinstance(child, list) and child and isinstance(below, int))):
            child = [{}] if isinstance(below, int) else {}
            node[key] = child
        node = child
    last = path[-1]
    if delete:
        if _has(node, last):
            del node[last]
    elif isinstance(node, list):
        node[last if last < len(node) else -1] = value
    else:
        node[last] = value


def _has(node: Any, key: Any) -> bool:
    return (isinstance(node, dict) and key in node) or (
        isinstance(node, list) and isinstance(key, int) and key < len(node)
    )


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], paths: list[tuple[Any, ...]]) -> dict[str, Any]:
    """`base` with one to three fields deleted or given odd values."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        mutate(data, draw(st.sampled_from(paths)), draw(ODD), draw(st.booleans()))
    return data


def encode(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """Bytes cut short, with invalid UTF-8 spliced in, or left as they are."""
    how = draw(st.sampled_from(["as is", "truncated", "bad utf-8"]))
    if how == "truncated" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "bad utf-8":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + raw[at:]
    return raw


ERROR_IN_200 = st.builds(
    lambda error, status: {"error": error, **({"status_code": status} if status is not None else {})},
    st.one_of(ODD, st.fixed_dictionaries({"message": ODD, "code": ODD, "type": ODD})),
    st.one_of(st.none(), st.integers(-1, 700), st.text(max_size=3)),
)

NON_STREAM_BODIES = st.one_of(
    st.binary(max_size=300),
    mutated(good_completion(), COMPLETION_PATHS).map(encode).flatmap(damaged),
    ERROR_IN_200.map(encode).flatmap(damaged),
    st.just(encode(good_completion())).flatmap(damaged),
)


@st.composite
def sse_scripts(draw: st.DrawFn) -> list[bytes]:
    """A stream's bytes, split at random points: events mutated, dropped, cut, or garbage between them."""
    events: list[bytes] = []
    for event in good_events():
        roll = draw(
            st.sampled_from(["keep", "keep", "drop", "mutate", "mutate", "damage", "odd line", "error", "bytes"])
        )
        if roll == "drop":
            continue  # a missing finish or usage must show
        body = encode(draw(mutated(event, CHUNK_PATHS))) if roll == "mutate" else encode(event)
        if roll == "damage":
            body = draw(damaged(body))
        events.append(b"data: " + body + b"\n\n")
        if roll == "odd line":
            events.append(draw(st.sampled_from([b"event: error\n", b": ping\n\n", b"data: \n\n", b"retry: x\n"])))
        if roll == "error":
            events.append(b"data: " + encode(draw(ERROR_IN_200)) + b"\n\n")
        if roll == "bytes":
            events.append(b"data: " + draw(st.binary(max_size=40)) + b"\n\n")
    if draw(st.booleans()):
        events.append(b"data: [DONE]\n\n")
    raw = b"".join(events)
    if draw(st.integers(0, 3)) == 0 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]  # the connection dropped mid-event
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def byte_stream(parts: list[bytes]) -> Any:
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def raw_response(status: int, raw: bytes) -> Any:
    return lambda request: httpx.Response(status, headers={"content-type": "application/json"}, content=raw)


# --- what a caller may be handed ------------------------------------------------------------


def assert_usable_usage(usage: Usage | None) -> None:
    if usage is not None:
        counts = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_prompt_tokens)
        assert all(type(n) is int and n >= 0 for n in counts), usage


def assert_usable_completion(completion: ChatCompletion) -> None:
    """What the router and its callers read of an answer is there and of the right type."""
    assert isinstance(completion, ChatCompletion)
    assert isinstance(completion.choices, list) and completion.choices
    for choice in completion.choices:
        assert isinstance(choice.finish_reason, str)
        assert isinstance(choice.message.content, (str, type(None)))
        assert isinstance(choice.index, int)


def assert_usable_chunk(chunk: ChatCompletionChunk) -> None:
    assert isinstance(chunk, ChatCompletionChunk)
    assert isinstance(chunk.choices, list)
    for choice in chunk.choices:
        assert isinstance(choice.index, int)
        assert isinstance(choice.finish_reason, (str, type(None)))
        assert isinstance(choice.delta.content, (str, type(None)))


# --- the adapters ---------------------------------------------------------------------------


def run(check: Any, *args: Any) -> None:
    with mocked_backends(assert_all_called=False) as mock:
        anyio.run(check, mock, *args, backend="asyncio")


@FUZZ
@given(kind=st.sampled_from(KINDS), status=st.sampled_from([200, 200, 200, 400, 429, 500, 503]), raw=NON_STREAM_BODIES)
# crashes the fuzzer found (AttributeError, TypeError, ValueError, or a negative count passed on):
@example(kind="openai", status=200, raw=b'{"choices": "abc"}')
@example(kind="deepseek", status=200, raw=b'{"choices": null}')
@example(kind="deepseek", status=200, raw=b'{"choices": [null]}')
@example(kind="vllm", status=200, raw=b'{"choices": [{"index": 0, "message": null, "finish_reason": "stop"}]}')
@example(
    kind="vllm", status=200, raw=b'{"choices": [{"index": 0, "message": {"content": false}, "finish_reason": "stop"}]}'
)
@example(
    kind="cerebras",
    status=200,
    raw=b'{"choices": [{"index": null, "message": {"content": "hi"}, "finish_reason": "stop"}]}',
)
@example(
    kind="llamacpp",
    status=200,
    raw=b'{"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}], '
    b'"usage": {"prompt_tokens": -5, "completion_tokens": 2, "total_tokens": -3}}',
)
@example(
    kind="deepseek",
    status=200,
    raw=b'{"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}], '
    b'"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "prompt_cache_hit_tokens": NaN}}',
)
def test_non_streamed_garbage_is_a_provider_error(kind: str, status: int, raw: bytes) -> None:
    async def check(mock: respx.Router) -> None:
        route = mock.post(URL[kind]).mock(side_effect=raw_response(status, raw))
        try:
            done = await complete(adapter(kind))
        except ProviderError:
            assert route.called  # the bytes were parsed, not a mock that failed to connect
            return
        assert status == 200
        assert isinstance(done, Completed)
        assert_usable_completion(done.completion)
        assert_usable_usage(done.usage)

    run(check)


@FUZZ
@given(kind=st.sampled_from(KINDS), parts=sse_scripts())
@example(kind="openai", parts=[b'data: {"choices": "abc"}\n\n'])
@example(kind="vllm", parts=[b'data: {"choices": [1]}\n\n'])
@example(kind="deepseek", parts=[b'data: {"choices": null}\n\n'])
@example(
    kind="openai", parts=[b'data: {"choices": [{"index": 0, "delta": {"content": 5}, "finish_reason": "stop"}]}\n\n']
)
@example(
    kind="groq",
    parts=[
        b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}], '
        b'"x_groq": {"usage": {"prompt_tokens": Infinity, "completion_tokens": 1, "total_tokens": 2}}}\n\n'
    ],
)
def test_stream_garbage_is_a_provider_error_and_never_a_clean_partial_end(kind: str, parts: list[bytes]) -> None:
    async def check(mock: respx.Router) -> None:
        route = mock.post(URL[kind]).mock(side_effect=byte_stream(parts))
        try:
            stream, chunks = await drain(adapter(kind))
        except ProviderError:
            assert route.called
            return
        for c in chunks:
            assert_usable_chunk(c)
        assert stream.finished, "the stream ended cleanly without every choice finishing"
        assert_usable_usage(stream.usage)

    run(check)


def test_a_single_10_mb_line_is_a_provider_error_or_an_answer() -> None:
    """One huge line, streamed and not: parsed or refused as a typed failure, without a crash."""
    huge = b'{"choices": [{"index": 0, "delta": {"content": "' + b"a" * BIG_LINE + b'"}, "finish_reason": null}]}'

    async def check(mock: respx.Router) -> None:
        line = b"data: " + huge
        mock.post(URL["vllm"]).mock(side_effect=byte_stream([line[i : i + 65536] for i in range(0, len(line), 65536)]))
        with pytest.raises(ProviderError):  # one token, never finished: a cut
            await drain(adapter("vllm"))
        mock.post(URL["openai"]).mock(side_effect=raw_response(200, b"x" * BIG_LINE))
        with pytest.raises(ProviderError):
            await complete(adapter("openai"))

    run(check)


def test_a_line_past_the_readers_cap_is_a_broken_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line that grows past the SSE reader's cap without ending becomes a typed stream failure."""
    import providers.sse as sse
    from providers.errors import StreamBroken

    monkeypatch.setattr(sse, "MAX_LINE_BYTES", 1024 * 1024)
    line = b"data: " + b"a" * BIG_LINE

    async def check(mock: respx.Router) -> None:
        mock.post(URL["vllm"]).mock(side_effect=byte_stream([line[i : i + 65536] for i in range(0, len(line), 65536)]))
        with pytest.raises(StreamBroken, match="longer than 1048576 bytes"):
            await drain(adapter("vllm"))

    run(check)


# --- through the router ---------------------------------------------------------------------


def router_config(kind: str) -> dict[str, Any]:
    """One deployment of `kind`; one retry on it, with a tiny backoff, so a retried failure is seen too."""
    backend: dict[str, Any] = {"provider": kind, "api_key": "sk-fuzz-0123456789abcdef"}
    if BASE_URL[kind]:
        backend["base_url"] = BASE_URL[kind]
    return {
        "backends": {"up": backend},
        "models": {"fuzz": {"deployments": [{"backend": "up", "model": "m"}]}},
        "retry": {"attempts_per_deployment": 2, "backoff_initial_s": 0.001, "backoff_max_s": 0.002},
        "timeouts": {"first_token_s": 5, "stall_s": 5, "total_s": 10},
        "load_probes": {"enabled": False},
    }


async def call_router(kind: str, *, stream: bool) -> None:
    """Call through the public client and read the answer to its end; return only if it is usable."""
    async with AsyncRouter.from_config(router_config(kind)) as router:
        messages = [{"role": "user", "content": "hi"}]
        if not stream:
            assert_usable_completion(await router.chat.completions.create(model="fuzz", messages=messages))
            return
        response = await router.chat.completions.create(model="fuzz", messages=messages, stream=True)
        finished = False
        async for c in response:
            assert_usable_chunk(c)
            finished |= any(choice.finish_reason is not None for choice in c.choices)
        assert finished, "the stream ended cleanly without a finish_reason"


@ROUTER_FUZZ
@given(kind=st.sampled_from(KINDS), status=st.sampled_from([200, 200, 200, 500, 503]), raw=NON_STREAM_BODIES)
@example(kind="deepseek", status=200, raw=b'{"choices": null}')
def test_router_turns_non_streamed_garbage_into_an_api_error(kind: str, status: int, raw: bytes) -> None:
    async def check(mock: respx.Router) -> None:
        route = mock.post(URL[kind]).mock(side_effect=raw_response(status, raw))
        try:
            await call_router(kind, stream=False)
        except openai.APIError:
            assert route.called
            return
        assert status == 200

    run(check)


@ROUTER_FUZZ
@given(kind=st.sampled_from(KINDS), parts=sse_scripts())
@example(kind="deepseek", parts=[b'data: {"choices": null}\n\n'])
def test_router_turns_stream_garbage_into_an_api_error(kind: str, parts: list[bytes]) -> None:
    async def check(mock: respx.Router) -> None:
        route = mock.post(URL[kind]).mock(side_effect=byte_stream(parts))
        try:
            await call_router(kind, stream=True)
        except openai.APIError:
            assert route.called

    run(check)


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_an_answer_the_server_gave_up_on_is_not_a_finished_one(reason: str) -> None:
    """vLLM ends a request it aborted with finish_reason `abort`: a cut answer, never a success."""

    async def check(mock: respx.Router) -> None:
        events = [chunk({"content": "Hel"}), chunk({}, reason)]
        mock.post(URL["vllm"]).mock(side_effect=byte_stream([b"data: " + encode(e) + b"\n\n" for e in events]))
        with pytest.raises(ServerError, match=reason):
            await drain(adapter("vllm"))
        cut = completion({"content": "Hel"}, None)
        cut["choices"][0]["finish_reason"] = reason
        mock.post(URL["openai"]).mock(side_effect=raw_response(200, encode(cut)))
        with pytest.raises(ServerError, match=reason):
            await complete(adapter("openai"))

    run(check)


def test_an_error_object_in_a_200_is_the_servers_failure() -> None:
    """With no status of its own, an error inside a 200 is retried elsewhere, not blamed on the request."""

    async def check(mock: respx.Router) -> None:
        mock.post(URL["openai"]).mock(side_effect=raw_response(200, b'{"error": {"message": "engine died"}}'))
        with pytest.raises(ServerError, match="engine died") as failure:
            await complete(adapter("openai"))
        assert failure.value.retryable

    run(check)
