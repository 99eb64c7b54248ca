"""`inference-router usage`: the requests, tokens and cost a usage file has recorded, grouped as asked.

The file is the SQLite file routers write when their config sets `usage: {path: ...}` (see
`router.observe.usage`); every process and run that shared it is counted. Nothing here talks to a backend.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.table import Table

from router.cli import EXIT_CONFIG, EXIT_OK
from router.cli.common import load, print_json, stdout_console
from router.observe.usage import GROUP_KEYS, UsageRow, read_usage

_COUNTERS = tuple(f.name for f in fields(UsageRow) if f.name not in GROUP_KEYS)
"""The numeric fields of a row (requests … cache_hits): what a total adds up."""

_COLUMNS = (
    ("requests", "requests"),
    ("attempts", "attempts"),
    ("errors", "errors"),
    ("failures", "failures"),
    ("prompt_tokens", "tokens in"),
    ("completion_tokens", "tokens out"),
    ("cached_tokens", "cached in"),
    ("cache_hits", "cache hits"),
)
"""The table's integer columns after the group keys (cost comes last)."""


def run_usage(args: argparse.Namespace) -> int:
    """Print the grouped totals and their sum (a table, or `{"since_s", "rows", "total", ...}` as JSON).

    Exit 1 when no file is named (neither `--db` nor a CONFIG with `usage.path`), the config is
    invalid, or the file is missing or unreadable.
    """
    path = _usage_path(args)
    if path is None:
        return EXIT_CONFIG
    groups = tuple(key for key in GROUP_KEYS if key in args.by)
    try:
        rows = read_usage(path, since_s=args.since, group_by=groups)
        # grouped by tag, a call with several tags is in several rows: the total must count it once
        overall = read_usage(path, since_s=args.since, group_by=())
    except FileNotFoundError:
        return _fail(
            args,
            "FileNotFoundError",
            f"no usage file at {path}: nothing has been recorded there yet "
            "(a router writes it when its config sets usage.path)",
        )
    except (OSError, ValueError) as exc:
        return _fail(args, type(exc).__name__, str(exc))
    total = _total(overall)
    if args.json:
        print_json(
            {
                "db": str(path),
                "since_s": args.since,
                "group_by": list(groups),
                "rows": [row.to_dict() for row in rows],
                "total": total,
            }
        )
        return EXIT_OK
    _print_table(path, args.since, groups, rows, total)
    return EXIT_OK


def _usage_path(args: argparse.Namespace) -> Path | None:
    """`--db`, else the config's `usage.path`; None after saying why there is neither."""
    if args.db:
        return Path(args.db).expanduser()
    if args.config is None:
        _fail(args, "UsageError", "no usage file given: pass --db PATH, or a CONFIG whose usage.path is set")
        return None
    config = load(args.config, as_json=args.json)
    if config is None:
        return None
    if config.usage.path is None:
        _fail(
            args,
            "UsageError",
            f"{args.config}: usage.path is not set: set `usage: {{path: ...}}` in the config, or pass --db PATH",
        )
        return None
    return Path(config.usage.path).expanduser()


def _fail(args: argparse.Namespace, kind: str, message: str) -> int:
    if args.json:
        print_json({"error": {"type": kind, "message": message}})
    else:
        print(f"error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _total(overall: list[UsageRow]) -> dict[str, Any]:
    """The counters of the ungrouped query (one row, or none for an empty window)."""
    total: dict[str, Any] = {name: 0 for name in _COUNTERS}
    total["cost_usd"] = 0.0
    for row in overall:
        for name in _COUNTERS:
            total[name] += getattr(row, name)
    return total


def duration_label(seconds: float) -> str:
    """`86400.0` → `1d`, `5400.0` → `90m`: the largest unit that divides it evenly."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _print_table(
    path: Path, since_s: float | None, groups: tuple[str, ...], rows: list[UsageRow], total: dict[str, Any]
) -> None:
    window = f"last {duration_label(since_s)}" if since_s is not None else "all recorded"
    table = Table(title=f"usage, {window} ({path})", show_footer=False)
    for key in groups:
        table.add_column(key)
    for _, title in _COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("cost $", justify="right")
    for index, row in enumerate(rows):
        keys = [_key_text(key, getattr(row, key)) for key in groups]
        numbers = [f"{getattr(row, name):,}" for name, _ in _COLUMNS]
        table.add_row(*keys, *numbers, f"{row.cost_usd:.6f}", end_section=index == len(rows) - 1)
    labels = ["[bold]total[/]", *([""] * (len(groups) - 1))] if groups else []
    table.add_row(
        *labels,
        *(f"[bold]{total[name]:,}[/]" for name, _ in _COLUMNS),
        f"[bold]{total['cost_usd']:.6f}[/]",
    )
    if sum(row.requests for row in rows) != total["requests"]:  # grouped by tag, with multi-tag calls
        table.caption = "a call with several tags counts under each of them; the total counts it once"
    console = stdout_console()
    console.print(table)
    if not rows:
        console.print("no calls recorded" + (f" in the last {duration_label(since_s)}" if since_s is not None else ""))


def _key_text(key: str, value: str | None) -> str:
    if key == "tag" and value == "":
        return "[dim](untagged)[/]"
    if key == "key" and value == "":
        return "[dim](no key)[/]"
    return (value or "–").replace("[", "\\[")
