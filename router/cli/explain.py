"""`inference-router explain`: how a request would be routed, without sending it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
from rich.markup import escape
from rich.table import Table

from router.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from router.cli.common import error_dict, error_message, hints_message, load, print_json, route_hints, stdout_console
from router.client import AsyncRouter
from router.path.record import RouteRecord


def run_explain(args: argparse.Namespace) -> int:
    """Print the matched rule, the ranking and the exclusions (a table, or the route record as JSON).

    Exit 1 for an invalid config or a model the config does not serve, 2 for a bad hint.
    """
    try:
        hints = route_hints(args.tag, args.policy)
    except ValueError as exc:
        print(f"inference-router explain: error: {hints_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    config = load(args.config, as_json=args.json)
    if config is None:
        return EXIT_CONFIG
    router = AsyncRouter(config)
    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.tools:
        params["tools"] = [{"type": "function", "function": {"name": "tool", "parameters": {"type": "object"}}}]

    async def explain() -> RouteRecord:
        try:
            return await router.explain(
                model=args.model,
                messages=[{"role": "user", "content": args.prompt}],
                route=hints,
                stream=args.stream,
                **params,
            )
        finally:
            await router.aclose()

    try:
        record = anyio.run(explain)
    except Exception as exc:  # UnknownModelError (an openai.NotFoundError), a ValueError from the request
        if args.json:
            print_json({"error": error_dict(exc)})
        else:
            print(f"error: {error_message(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print_json(record.to_dict())
        return EXIT_OK
    _print_table(args.model, record)
    return EXIT_OK


def _print_table(model: str, record: RouteRecord) -> None:
    console = stdout_console()
    heading = f"{model}: policy {record.policy} · rule {record.rule or 'none'}"
    if record.tags:
        heading += f" · tags {', '.join(record.tags)}"
    table = Table(title=heading)
    for column in (
        "#",
        "alias",
        "candidate",
        "$/M in",
        "$/M out",
        "exp. cost",
        "exp. TTFT",
        "exp. time",
        "with wait",
        "load",
        "headroom",
    ):
        table.add_column(column, justify="left" if column in ("alias", "candidate") else "right")
    for line in record.ranking:
        table.add_row(
            str(line.rank),
            line.alias,
            line.candidate,
            "–" if line.input_per_mtok is None else f"{line.input_per_mtok:g}",
            "–" if line.output_per_mtok is None else f"{line.output_per_mtok:g}",
            "–" if line.expected_cost_usd is None else f"${line.expected_cost_usd:.6f}",
            f"{line.expected_ttft_s:.2f}s",
            f"{line.expected_duration_s:.2f}s",
            f"{line.expected_completion_s:.2f}s",
            f"{line.load:.2f}",
            "ok" if line.limited_for_s is None else f"limited {line.limited_for_s:.0f}s",
        )
    console.print(table)
    if not record.ranking:
        console.print("[red]no candidate left[/]: the call would fail (see the exclusions)")
    for exclusion in record.excluded:
        console.print(f"[yellow]excluded[/] {escape(exclusion.candidate)}: {escape(exclusion.reason)}", highlight=False)
