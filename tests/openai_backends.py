"""Mock backends that speak every OpenAI endpoint the router routes (chat, completions, embeddings,
responses, streams of each), for tests of the openai surface and of the frameworks on top of it.

`down` answers 503 to everything, so each call falls over to `up`: every test sees a fallback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import respx

DOWN = "http://down.test/v1"
UP = "http://up.test/v1"
GENERATIVE = ["chat", "completions", "responses"]
KEYS = {"down": "sk-test-surface-down-7c1e", "up": "sk-test-surface-up-2b9d"}


def config(**overrides: Any) -> dict[str, Any]:
    """Alias `chat` on `down` then `up` (ordered), declared to serve every endpoint but embeddings."""
    base: dict[str, Any] = {
        "backends": {
            "down": {"provider": "openai", "base_url": DOWN, "api_key": KEYS["down"]},
            "up": {"provider": "openai", "base_url": UP, "api_key": KEYS["up"]},
        },
        "models": {
            "chat": {
                "policy": "ordered",
                "deployments": [
                    {"backend": "down", "model": "m-down", "endpoints": GENERATIVE},
                    {"backend": "up", "model": "m-up", "endpoints": GENERATIVE},
                ],
            },
        },
        "retry": {"attempts_per_deployment": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02},
        "timeouts": {"first_token_s": 5, "stall_s": 5, "total_s": 20},
        "telemetry": {"otel": "off"},
    }
    base.update(overrides)
    return base


def _usage(prompt: int = 5, completion: int = 3) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_answer(body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
    """What the `up` model says: a tool call when tools are offered, JSON when a schema is asked, else text."""
    tools = body.get("tools") or []
    if tools and body.get("tool_choice") != "none":
        function = tools[0]["function"]
        arguments = json.dumps(_instance_of(function.get("parameters") or {}))
        return None, [
            {"id": "call_1", "type": "function", "function": {"name": function["name"], "arguments": arguments}}
        ]
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return json.dumps(_instance_of(response_format["json_schema"].get("schema") or {})), None
    if response_format.get("type") == "json_object":
        return json.dumps({"name": "Ada", "age": 36}), None
    return "Hello from up.", None


def _instance_of(schema: dict[str, Any]) -> Any:
    """A value that satisfies a (simple) JSON schema: what a model following it would produce."""
    kind = schema.get("type")
    if "properties" in schema or kind == "object":
        return {name: _instance_of(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "integer":
        return 36
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_instance_of(schema.get("items") or {})]
    if "anyOf" in schema:
        return _instance_of(schema["anyOf"][0])
    return "Ada"


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    content, tool_calls = _chat_answer(body)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": _usage(),
    }


def _event(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


def chat_stream(body: dict[str, Any]) -> Iterator[bytes]:
    content, tool_calls = _chat_answer(body)
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
    yield _event(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    )
    if tool_calls:
        call = tool_calls[0]
        first = {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        yield _event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]})
        rest = {"index": 0, "function": {"arguments": call["function"]["arguments"]}}
        yield _event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [rest]}, "finish_reason": None}]})
        finish = "tool_calls"
    else:
        assert content is not None
        for piece in (content[: len(content) // 2], content[len(content) // 2 :]):
            yield _event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        finish = "stop"
    yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    yield _event({**base, "choices": [], "usage": _usage()})
    yield b"data: [DONE]\n\n"


def text_completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "cmpl-up",
        "object": "text_completion",
        "created": 1,
        "model": body["model"],
        "choices": [{"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(2, 1),
    }


def text_stream(body: dict[str, Any]) -> Iterator[bytes]:
    base = {"id": "cmpl-up", "object": "text_completion", "created": 1, "model": body["model"]}
    for piece in (" wor", "ld"):
        yield _event({**base, "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]})
    yield _event({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]})
    yield _event({**base, "choices": [], "usage": _usage(2, 1)})
    yield b"data: [DONE]\n\n"


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return {
        "object": "list",
        "model": body["model"],
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]} for i in range(len(inputs))
        ],
        "usage": {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)},
    }


RESPONSE_ID = "resp_up_1"


def response_object(body: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    text = "Hello from the Responses API."
    text_format = (body.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_schema":
        text = json.dumps(_instance_of(text_format.get("schema") or {}))
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": body.get("model", "m-up"),
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 7,
            "output_tokens": 5,
            "total_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def response_stream(body: dict[str, Any]) -> Iterator[bytes]:
    """The Responses API's event sequence for one text message, as OpenAI documents it."""
    final = response_object(body)
    message = final["output"][0]
    part = message["content"][0]
    created = {**final, "status": "in_progress", "output": [], "usage": None}
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": created},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
    ]
    text = part["text"]
    for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
        events.append({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []})
    events += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": final},
    ]
    for number, event in enumerate(events):
        yield _event({**event, "sequence_number": number}, event["type"])


def _answer(request: httpx.Request) -> httpx.Response:
    """The `up` backend: whatever endpoint and mode was asked, a correct answer."""
    body = json.loads(request.content) if request.content else {}
    path = request.url.path.removeprefix("/v1")
    stream = body.get("stream") is True
    if request.method == "GET" and path.startswith("/responses/"):
        return httpx.Response(200, json=response_object({"model": "m-up"}))
    makers: dict[str, Any] = {
        "/chat/completions": (chat_completion, chat_stream),
        "/completions": (text_completion, text_stream),
        "/embeddings": (embeddings, None),
        "/responses": (response_object, response_stream),
    }
    whole, streamed = makers[path]
    if stream:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(streamed(body)))
    return httpx.Response(200, json=whole(body))


def mock(router: respx.Router) -> dict[str, list[dict[str, Any]]]:
    """Route `down` to 503s and `up` to correct answers; returns the bodies each received, by backend."""
    seen: dict[str, list[dict[str, Any]]] = {"down": [], "up": []}

    def down(request: httpx.Request) -> httpx.Response:
        seen["down"].append(json.loads(request.content) if request.content else {})
        return httpx.Response(503, json={"error": {"message": "overloaded", "type": "server_error"}})

    def up(request: httpx.Request) -> httpx.Response:
        seen["up"].append(json.loads(request.content) if request.content else {"method": request.method})
        return _answer(request)

    router.route(url__startswith=DOWN).mock(side_effect=down)
    router.route(url__startswith=UP).mock(side_effect=up)
    return seen
