"""`inference-router health`: every deployment's circuit, stats, server load and headroom."""

from __future__ import annotations

import argparse

import anyio
from rich.markup import escape
from rich.table import Table

from router.cli import EXIT_CONFIG, EXIT_OK
from router.cli.common import load, print_json, progress_console, spinner, stdout_console
from router.client import AsyncRouter
from router.path.health import DeploymentHealth


def run_health(args: argparse.Namespace) -> int:
    """Probe self-hosted servers' load once, then print every deployment (a table, or a JSON list)."""
    config = load(args.config, as_json=args.json)
    if config is None:
        return EXIT_CONFIG

    async def report() -> list[DeploymentHealth]:
        async with AsyncRouter(config) as router:
            # a server that does not answer costs up to load_probes.timeout_s: show what we are waiting for
            with spinner(progress_console(as_json=args.json), "probing self-hosted servers for their load…"):
                await router.probe_load()
            return await router.health()

    rows = anyio.run(report)
    if args.json:
        print_json([row.to_dict() for row in rows])
        return EXIT_OK
    _print_table(args.config, rows)
    return EXIT_OK


def _number(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:.2f}{unit}"


def _print_table(source: str, rows: list[DeploymentHealth]) -> None:
    table = Table(title=f"{source}: deployments")
    for column in (
        "deployment",
        "provider",
        "circuit",
        "cooldown",
        "errors",
        "in flight",
        "TTFT",
        "latency",
        "tok/s",
        "server load",
        "headroom",
    ):
        table.add_column(column, justify="left" if column in ("deployment", "provider", "circuit") else "right")
    for row in rows:
        state = {"closed": "[green]closed[/]", "open": "[red]open[/]"}.get(row.state, "[yellow]half-open[/]")
        if row.probe_ok is None:
            load = "–"
        elif not row.probe_ok:
            load = "[red]not answering[/]"
        else:
            load = f"{row.server_running}/{row.server_slots or '?'} running, {row.server_waiting} queued"
        table.add_row(
            escape(row.deployment),
            row.provider,
            state,
            f"{row.cooldown_remaining_s:.1f}s" if row.cooldown_remaining_s else "–",
            f"{row.failures}/{row.requests}",
            str(row.in_flight),
            _number(row.ttft_s, "s"),
            _number(row.latency_s, "s"),
            _number(row.tokens_per_s),
            load,
            "ok" if row.limited_for_s is None else f"limited {row.limited_for_s:.0f}s",
        )
    stdout_console().print(table)
