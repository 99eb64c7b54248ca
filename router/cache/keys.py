"""The cache key: a versioned, canonical hash of everything that can change the answer.

In: the candidate set the call would route to, and every request field except the ones that
can't change the answer (`NOT_IN_KEY`). Normalised: dict order, `max_completion_tokens` ≡
`max_tokens`, a single `stop` string ≡ a one-element list, `null` ≡ absent, `n: 1` ≡ absent.
API keys never enter a key: they are not part of the request body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

KEY_VERSION = "v1"
NOT_IN_KEY = frozenset(
    {
        "model",  # replaced by the candidate set
        "stream",
        "stream_options",
        "metadata",
        "user",
        "store",
        "service_tier",
        "parallel_tool_calls_hint",
    }
)
"""Request fields that never change the answer, so never split the cache."""


def canonical_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The answer-relevant fields of a request body, with equivalent spellings made equal."""
    fields: dict[str, Any] = {}
    for name, value in body.items():
        if name in NOT_IN_KEY or value is None:
            continue
        fields[name] = value
    if "max_completion_tokens" in fields:
        fields["max_tokens"] = fields.pop("max_completion_tokens")
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    if fields.get("n") == 1:
        del fields["n"]
    return fields


def cache_key(candidates: Iterable[str], body: Mapping[str, Any], *, namespace: str = "") -> str:
    """`ir:v1:<namespace>:<sha256>` of the sorted candidate ids and the canonical request."""
    payload = json.dumps(
        {"candidates": sorted(set(candidates)), "request": canonical_request(body)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return f"ir:{KEY_VERSION}:{namespace}:{digest}"


def deterministic(body: Mapping[str, Any]) -> bool:
    """Whether the same request should give the same answer: `temperature == 0` or a `seed`."""
    return body.get("temperature") == 0 or body.get("seed") is not None
