"""Load reported by self-hosted servers (vLLM, llama.cpp), read from their own HTTP endpoints.

Adapters that can read load have `read_load` (see `LoadReporter`); the router polls it in the
background. Here: the `ServerLoad` snapshot, a minimal Prometheus text parser, and the shared GET.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import anyio
import httpx2

from providers.errors import ConnectionFailed, ProviderError, ProviderTimeout, ServerError

if TYPE_CHECKING:
    from providers.base import OpenAICompatible

__all__ = [
    "PROMETHEUS_ACCEPT",
    "LoadReporter",
    "ServerLoad",
    "fetch",
    "json_of",
    "metric_values",
    "server_root",
    "total",
    "within",
]

# Ask for the classic text format: prometheus_client answers OpenMetrics only when asked for it.
PROMETHEUS_ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """One load snapshot; a field is None when this server doesn't report it.

    `running`: requests being generated; `waiting`: queued for a slot or for KV cache;
    `slots`: how many requests it runs at once (llama.cpp); `kv_cache_usage`: 0–1 (vLLM).
    """

    running: int | None
    waiting: int | None
    slots: int | None
    kv_cache_usage: float | None


@runtime_checkable
class LoadReporter(Protocol):
    """An adapter that can tell how busy its server is (`VLLMProvider`, `LlamaCppProvider`)."""

    name: str

    async def read_load(self, client: httpx2.AsyncClient, *, timeout_s: float) -> ServerLoad:
        """Read the server's load now; raise a `ProviderError` when it doesn't answer."""
        ...


# --- Prometheus text format (only sample lines; HELP/TYPE and other comments are skipped) ------

_NAME = re.compile(r"[ \t]*([a-zA-Z_:][a-zA-Z0-9_:]*)")
_LABELS = re.compile(r'[ \t]*\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\}')  # a `}` inside a quoted value is no end


def metric_values(text: str, names: Iterable[str]) -> dict[str, list[float]]:
    """The sample values of each wanted metric, one per label set, in text order.

    A metric absent from `text` is absent from the result; NaN samples ("no value") and lines
    that don't parse are skipped; timestamps and OpenMetrics exemplars after the value are ignored.
    """
    wanted = frozenset(names)
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        name_match = _NAME.match(line)
        if name_match is None or name_match.group(1) not in wanted:
            continue  # comments, blank lines and unwanted metrics end here, cheaply
        end = name_match.end()
        labels = _LABELS.match(line, end)
        if labels is not None:
            end = labels.end()
        elif end < len(line) and line[end] not in " \t":
            continue  # a broken label set
        fields = line[end:].split()
        try:
            value = float(fields[0])
        except (IndexError, ValueError):
            continue
        if not math.isnan(value):
            found.setdefault(name_match.group(1), []).append(value)
    return found


def total(values: list[float] | None) -> int | None:
    """The sum of a count metric's samples as an int, or None when absent or not finite."""
    if not values:
        return None
    summed = math.fsum(values)
    return round(summed) if math.isfinite(summed) else None


# --- the GET shared by the adapters ---------------------------------------------------------


def server_root(base_url: str) -> str:
    """The server's own root: the OpenAI base URL without its trailing `/v1`."""
    return base_url.rstrip("/").removesuffix("/v1")


async def within(timeout_s: float, name: str, work: Awaitable[T]) -> T:
    """Await `work` for at most `timeout_s` seconds in all, else raise `ProviderTimeout`."""
    with anyio.move_on_after(timeout_s):
        return await work
    raise ProviderTimeout(f"{name}: no load report within {timeout_s:g}s")


async def fetch(
    adapter: OpenAICompatible,
    client: httpx2.AsyncClient,
    path: str,
    *,
    timeout_s: float,
    accept: str = "application/json",
    missing_ok: bool = False,
) -> httpx2.Response | None:
    """GET `path` on the adapter's server root with its auth header; errors become `ProviderError`s.

    With `missing_ok`, a 404 or 501 (endpoint not enabled on this server) returns None instead.
    """
    url = server_root(adapter.base_url) + path
    headers = {k: v for k, v in adapter._headers.items() if k != "content-type"}
    headers["accept"] = accept
    response: httpx2.Response | None = None
    failure: ProviderError | None = None
    try:
        response = await client.get(url, headers=headers, timeout=timeout_s)
    except httpx2.TimeoutException as exc:
        failure = ProviderTimeout(f"{adapter.name}: GET {path} timed out ({type(exc).__name__})")
    except httpx2.TransportError as exc:
        text = str(exc).lower()
        refused = "refused" in text or "all connection attempts failed" in text
        failure = ConnectionFailed(f"{adapter.name}: GET {path} failed ({exc})", retryable=not refused)
    if failure is not None:
        raise failure  # outside the except: the httpx2 error holds the request, auth header included
    assert response is not None
    if response.status_code < 300:
        return response
    if missing_ok and response.status_code in (404, 501):
        return None
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text[:2000]
    raise adapter.classify(response.status_code, body, response.headers)


def json_of(response: httpx2.Response, name: str) -> Any:
    """The JSON body of a load endpoint, or `ServerError` when it isn't JSON."""
    try:
        return json.loads(response.content)
    except ValueError:
        raise ServerError(f"{name}: {response.url.path} is not JSON: {response.text[:200]!r}") from None
