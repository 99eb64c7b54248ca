"""`inference-router chat`: one routed chat completion, the answer on stdout, its route on stderr.

The answer streams to stdout as it arrives (plain text, flushed per chunk), so `chat ... > answer.txt`
captures only the answer; the one-line route summary and any error go to stderr. `--json` waits
for the whole answer and prints `{"content", "finish_reason", "route"}` instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
import openai
from openai.types.chat import ChatCompletionMessageParam

from router.cli import EXIT_CALL_FAILED, EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from router.cli.common import (
    error_dict,
    error_message,
    hints_message,
    load,
    print_json,
    progress_console,
    route_hints,
    spinner,
)
from router.client import AsyncRouter
from router.config import RouterConfig
from router.path.hints import RouteHints
from router.path.record import RouteRecord, route_of


def route_line(record: RouteRecord, *, finish_reason: str | None = None) -> str:
    """`summary()` plus what a person at a terminal wants next: TTFT, tokens, cost, rule, tags.

    `gpt-oss-120b → groq/openai/gpt-oss-120b in 0.420s [groq/… ok 0.42s] · ttft 0.08s · 12+34 tokens ·
    $0.000021 · rule long-prompts`.
    """
    parts = [record.summary()]
    if record.ttft_s is not None:
        parts.append(f"ttft {record.ttft_s:.2f}s")
    usage = record.usage
    if usage is not None:
        tokens = f"{usage.prompt_tokens}+{usage.completion_tokens} tokens"
        if usage.cached_prompt_tokens:
            tokens += f" ({usage.cached_prompt_tokens} cached)"
        parts.append(tokens)
    if record.cost_usd is not None:
        parts.append(f"${record.cost_usd:.6f}")
    if record.cached:
        age = f", {record.cache_age_s:.0f}s old" if record.cache_age_s is not None else ""
        parts.append(f"cache hit{age}")
    if record.hedged:
        parts.append("hedged")
    if record.recovered_after_chars is not None:
        parts.append(f"stream recovered after {record.recovered_after_chars} chars")
    if record.rule:
        parts.append(f"rule {record.rule}")
    if record.tags:
        parts.append(f"tags {','.join(record.tags)}")
    if finish_reason == "length":
        parts.append("cut at max_tokens")
    return " · ".join(parts)


def report_failure(error: openai.APIError, route: RouteRecord | None) -> None:
    """The error class and message, every attempt, and the exclusions, on stderr."""
    print(f"error: {type(error).__name__}: {error_message(error)}", file=sys.stderr)
    attempts = getattr(error, "attempts", None) or (route.attempts if route is not None else [])
    for number, attempt in enumerate(attempts, 1):
        status = f" HTTP {attempt.status_code}" if attempt.status_code else ""
        detail = f": {attempt.error}" if attempt.error else ""
        print(f"  attempt {number}: {attempt.short()}{status}{detail}", file=sys.stderr)
    for exclusion in route.excluded if route is not None else []:
        print(f"  excluded {exclusion.candidate}: {exclusion.reason}", file=sys.stderr)


def _route_of_error(error: BaseException, fallback: RouteRecord | None = None) -> RouteRecord | None:
    route = getattr(error, "route", None)
    return route if isinstance(route, RouteRecord) else fallback


def run_chat(args: argparse.Namespace) -> int:
    """Run `chat`; returns the exit code (see `router.cli`)."""
    try:
        hints = route_hints(args.tag, args.policy, args.deadline)
    except ValueError as exc:
        print(f"inference-router chat: error: {hints_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    config = load(args.config, as_json=args.json)
    if config is None:
        return EXIT_CONFIG
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    messages: list[ChatCompletionMessageParam] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    call = _Call(config, args.model, messages, hints, params)
    if args.json:
        return anyio.run(call.as_json)
    return anyio.run(call.complete if args.no_stream else call.stream)


class _Call:
    """One chat completion through a router that lives as long as the call."""

    def __init__(
        self,
        config: RouterConfig,
        model: str,
        messages: list[ChatCompletionMessageParam],
        hints: RouteHints,
        params: dict[str, Any],
    ) -> None:
        self.config = config
        self.model = model
        self.messages = messages
        self.hints = hints
        self.params = params

    async def stream(self) -> int:
        """Print each chunk's text as it arrives, then the route summary."""
        out = sys.stdout
        last = "\n"  # the last character written, to end the answer with a newline
        finish_reason: str | None = None
        stream = None
        async with AsyncRouter(self.config) as router:
            try:
                # the call returns at the commit point (the first token): until then, show we are waiting
                with spinner(progress_console(as_json=False), f"waiting for {self.model}…"):
                    stream = await router.chat.completions.create(
                        model=self.model, messages=self.messages, stream=True, route=self.hints, **self.params
                    )
                async with stream:
                    async for chunk in stream:
                        if not chunk.choices:
                            continue
                        choice = chunk.choices[0]
                        finish_reason = choice.finish_reason or finish_reason
                        text = choice.delta.content
                        if text:
                            out.write(text)
                            out.flush()
                            last = text[-1]
            except openai.APIError as error:
                if last != "\n":
                    out.write("\n")
                    out.flush()
                report_failure(error, _route_of_error(error, stream.route if stream is not None else None))
                return EXIT_CALL_FAILED
        if last != "\n":
            out.write("\n")
            out.flush()
        print(route_line(route_of(stream), finish_reason=finish_reason), file=sys.stderr)
        return EXIT_OK

    async def complete(self) -> int:
        """Wait for the whole answer, print it, then the route summary."""
        async with AsyncRouter(self.config) as router:
            try:
                with spinner(progress_console(as_json=False), f"waiting for {self.model}…"):
                    reply = await router.chat.completions.create(
                        model=self.model, messages=self.messages, route=self.hints, **self.params
                    )
            except openai.APIError as error:
                report_failure(error, _route_of_error(error))
                return EXIT_CALL_FAILED
        choice = reply.choices[0] if reply.choices else None
        text = (choice.message.content or "") if choice is not None else ""
        print(text, end="" if text.endswith("\n") or not text else "\n", flush=True)
        print(route_line(route_of(reply), finish_reason=choice.finish_reason if choice else None), file=sys.stderr)
        return EXIT_OK

    async def as_json(self) -> int:
        """`{"content", "finish_reason", "route"}`, or `{"error", "route"}` and exit 3."""
        async with AsyncRouter(self.config) as router:
            try:
                reply = await router.chat.completions.create(
                    model=self.model, messages=self.messages, route=self.hints, **self.params
                )
            except openai.APIError as error:
                route = _route_of_error(error)
                print_json({"error": error_dict(error), "route": route.to_dict() if route is not None else None})
                return EXIT_CALL_FAILED
        choice = reply.choices[0] if reply.choices else None
        print_json(
            {
                "content": choice.message.content if choice is not None else None,
                "finish_reason": choice.finish_reason if choice is not None else None,
                "route": route_of(reply).to_dict(),
            }
        )
        return EXIT_OK
