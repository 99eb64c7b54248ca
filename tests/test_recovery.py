"""`streams.recover: continue`: a stream cut after its first tokens is continued by another deployment."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
import respx

from router import AsyncRouter, StreamInterruptedError, route_of

pytestmark = pytest.mark.anyio
PROMPT = [{"role": "user", "content": "Tell me a story."}]
FAKE = "http://fake.test/v1/chat/completions"


def cut_after(text: str) -> Any:
    """A stream that delivers `text` a character a chunk, then the connection drops."""

    async def body() -> AsyncIterator[bytes]:
        yield b'data: {"id":"f","object":"chat.completion.chunk","created":1,"model":"fake","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\n\n'
        for char in text:
            chunk = {
                "id": "f",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "fake",
                "choices": [{"index": 0, "delta": {"content": char}, "finish_reason": None}],
            }
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"

    return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def config(local: Any, *, recover: str = "continue", target: str = "llamacpp") -> dict[str, Any]:
    return {
        "backends": {
            "fake": {"provider": "openai", "base_url": "http://fake.test/v1"},
            "local": {"provider": target, "base_url": local.base_url},
        },
        "models": {
            "tiny": {
                "deployments": [{"backend": "fake", "model": "tiny-llama"}, {"backend": "local", "model": "tiny-llama"}]
            }
        },
        "streams": {"recover": recover},
        "load_probes": {"enabled": False},
    }


async def whole_answer(local: Any) -> str:
    direct = openai.AsyncOpenAI(base_url=local.base_url, api_key="none", max_retries=0)
    reply = await direct.chat.completions.create(model="tiny-llama", messages=PROMPT, max_tokens=12, temperature=0)
    await direct.close()
    return reply.choices[0].message.content or ""


async def test_a_cut_stream_is_continued_seamlessly_by_a_prefill_capable_deployment(
    llama_pair: Any, httpx2_mock: respx.Router
) -> None:
    local = llama_pair[0]
    httpx2_mock.route(host="127.0.0.1").pass_through()
    expected = await whole_answer(local)
    httpx2_mock.post(FAKE).mock(side_effect=cut_after(expected[:5]))
    async with AsyncRouter.from_config(config(local)) as router:
        stream = await router.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=12, temperature=0, stream=True
        )
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected, "the caller sees one answer: the continuation picks up where the cut left it"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1  # one role chunk, not two
    assert chunks[-1].choices[0].finish_reason == "length"
    record = route_of(stream)
    assert record.recovered_after_chars == 5 and record.backend == "local"
    assert [(a.backend, a.outcome) for a in record.attempts] == [("fake", "stream_broken"), ("local", "ok")]
    assert record.usage is not None and record.usage.completion_tokens == 7  # 12 asked, 5 already delivered


async def test_a_target_that_rejects_the_prefill_does_not_hide_the_original_failure(
    httpx2_mock: respx.Router,
) -> None:
    """The continuation target refuses the prefill: the caller gets the original break (no llama.cpp needed)."""
    httpx2_mock.post(FAKE).mock(side_effect=cut_after("Hello"))
    rejecting = httpx2_mock.post("http://127.0.0.1:9/v1/chat/completions").mock(
        return_value=httpx.Response(400, json={"error": {"message": "assistant prefill is not supported"}})
    )
    cfg = config(SimpleNamespace(base_url="http://127.0.0.1:9/v1"), target="vllm")
    async with AsyncRouter.from_config(cfg) as router:
        stream = await router.chat.completions.create(model="tiny", messages=PROMPT, stream=True)
        with pytest.raises(StreamInterruptedError) as caught:
            async for _ in stream:
                pass
    assert caught.value.partial_text == "Hello" and "stream cut" in str(caught.value)
    sent = json.loads(rejecting.calls.last.request.content)
    assert sent["messages"][-1] == {"role": "assistant", "content": "Hello"} and sent["continue_final_message"]
    assert [a.outcome for a in caught.value.attempts] == ["stream_broken", "bad_request"]


async def test_without_recovery_or_a_capable_target_the_break_raises(
    llama_pair: Any, httpx2_mock: respx.Router
) -> None:
    httpx2_mock.post(FAKE).mock(side_effect=cut_after("Hel"))
    for cfg in (config(llama_pair[0], recover="none"), config(llama_pair[0], target="openai")):
        async with AsyncRouter.from_config(cfg) as router:
            stream = await router.chat.completions.create(model="tiny", messages=PROMPT, stream=True)
            with pytest.raises(StreamInterruptedError) as caught:
                async for _ in stream:
                    pass
        assert caught.value.partial_text == "Hel"
        assert [a.backend for a in caught.value.attempts] == ["fake"]
