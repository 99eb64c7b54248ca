"""Cache entries: what is stored, and faithful conversion between streams and completions.

A stream is stored as its chunks (same boundaries, tool-call deltas, reasoning and the usage
chunk intact) and replayed as they were. A completion request may be answered from a stored
stream (its deltas merged) and a stream request from a stored completion (synthesised chunks).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from providers import Answered, RateLimitInfo, Usage
from providers.endpoints import usage_from

ENTRY_VERSION = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer."""

    kind: Literal["completion", "stream", "answer"]
    created: float
    """Wall-clock epoch seconds when it was stored."""
    items: list[dict[str, Any]]
    """One completion, the stream's chunks, or another endpoint's answer (embeddings, legacy
    completions), as JSON data."""

    def encode(self) -> bytes:
        return json.dumps(
            {"v": ENTRY_VERSION, "kind": self.kind, "created": self.created, "items": self.items}, separators=(",", ":")
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """None for anything unreadable or from another entry version (treated as a miss)."""
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if (
            not isinstance(data, dict)
            or data.get("v") != ENTRY_VERSION
            or data.get("kind") not in ("completion", "stream", "answer")
        ):
            return None
        return cls(data["kind"], float(data["created"]), list(data["items"]))

    @classmethod
    def of_completion(cls, completion: ChatCompletion) -> Entry:
        return cls("completion", time.time(), [completion.model_dump(mode="json", exclude_unset=True)])

    @classmethod
    def of_stream(cls, chunks: list[ChatCompletionChunk]) -> Entry:
        return cls("stream", time.time(), [c.model_dump(mode="json", exclude_unset=True) for c in chunks])

    @classmethod
    def of_answer(cls, data: dict[str, Any]) -> Entry:
        return cls("answer", time.time(), [data])

    def answer(self, endpoint: str) -> Answered:
        """Another endpoint's stored answer, as it was received."""
        data = self.items[0]
        return Answered(json.dumps(data).encode(), data, usage_from(endpoint, data, Usage), RateLimitInfo())

    def completion(self) -> ChatCompletion:
        """The answer as a completion (merging a stored stream's deltas)."""
        if self.kind == "completion":
            return ChatCompletion.model_validate(self.items[0])
        return merge_chunks(self.items)

    def chunks(self, *, include_usage: bool) -> list[ChatCompletionChunk]:
        """The answer as stream chunks (synthesised from a stored completion)."""
        items = self.items if self.kind == "stream" else split_completion(self.items[0])
        chunks = [ChatCompletionChunk.model_validate(item) for item in items]
        return [c for c in chunks if include_usage or c.choices or c.usage is None]


def merge_chunks(items: list[dict[str, Any]]) -> ChatCompletion:
    """A completion equal to what the chunks deliver: text, reasoning and tool calls concatenated."""
    first = items[0] if items else {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for item in items:
        if item.get("usage"):
            usage = item["usage"]
        for choice in item.get("choices") or []:
            merged = choices.setdefault(
                choice.get("index", 0), {"message": {"role": "assistant"}, "finish_reason": None}
            )
            delta = choice.get("delta") or {}
            message = merged["message"]
            for text_field in ("content", "reasoning_content", "reasoning", "refusal"):
                if delta.get(text_field):
                    message[text_field] = (message.get(text_field) or "") + delta[text_field]
            for call in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", [])
                index = call.get("index", 0)
                while len(calls) <= index:
                    calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                target = calls[index]
                if call.get("id"):
                    target["id"] = call["id"]
                function = call.get("function") or {}
                target["function"]["name"] += function.get("name") or ""
                target["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                merged["finish_reason"] = choice["finish_reason"]
            if choice.get("logprobs"):
                merged["logprobs"] = choice["logprobs"]
    message_choices = [
        {
            "index": index,
            "message": merged["message"],
            "finish_reason": merged["finish_reason"] or "stop",
            **({"logprobs": merged["logprobs"]} if "logprobs" in merged else {}),
        }
        for index, merged in sorted(choices.items())
    ]
    data: dict[str, Any] = {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": message_choices,
    }
    if first.get("system_fingerprint"):
        data["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        data["usage"] = usage
    return ChatCompletion.model_validate(data)


def split_completion(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Chunks that deliver a completion: role, reasoning, text, tool calls, finish, usage."""
    head = {
        "id": item.get("id", ""),
        "object": "chat.completion.chunk",
        "created": item.get("created", 0),
        "model": item.get("model", ""),
    }
    if item.get("system_fingerprint"):
        head["system_fingerprint"] = item["system_fingerprint"]
    chunks: list[dict[str, Any]] = []
    for choice in item.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}

        def chunk(delta: dict[str, Any], finish: str | None = None, index: int = index) -> dict[str, Any]:
            return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

        chunks.append(chunk({"role": message.get("role", "assistant"), "content": ""}))
        for text_field in ("reasoning_content", "reasoning", "refusal", "content"):
            if message.get(text_field):
                chunks.append(chunk({text_field: message[text_field]}))
        calls = message.get("tool_calls") or []
        if calls:
            chunks.append(chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}))
        chunks.append(chunk({}, choice.get("finish_reason") or "stop"))
    if item.get("usage"):
        chunks.append({**head, "choices": [], "usage": item["usage"]})
    return chunks
