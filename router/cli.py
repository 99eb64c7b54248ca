"""The `inference-router` command: `demo`, `check`, `explain`, `health`."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-router",
        description="Route OpenAI-style chat completions across LLM backends.",
        epilog="examples:\n  inference-router demo\n  inference-router check examples/router.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="route requests across three local llama.cpp servers, killing two midway (no keys needed)"
    )
    demo.add_argument("--requests", type=int, default=12, help="how many requests to send (default 12)")
    demo.add_argument("--json", action="store_true", help="print the route records as JSON")
    check = commands.add_parser("check", help="validate a config file; exit 1 listing every error as file:line")
    check.add_argument("config", help="a YAML or TOML config file")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    explain = commands.add_parser(
        "explain",
        help="show how a request would be routed: ranked candidates with their inputs, and exclusions",
        epilog="example:\n  inference-router explain examples/router.yaml -m gpt-oss-120b --policy cheapest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("config", help="a YAML or TOML config file")
    explain.add_argument("--model", "-m", required=True, help="an alias or a deployment's model id")
    explain.add_argument("--prompt", default="Hello!", help="the user message (its length drives the estimates)")
    explain.add_argument("--max-tokens", type=int, default=None, help="max_tokens of the request")
    explain.add_argument("--stream", action="store_true", help="explain a streamed request")
    explain.add_argument("--tools", action="store_true", help="the request uses tools")
    explain.add_argument("--policy", default=None, help="override the policy (a per-call hint)")
    explain.add_argument("--tag", action="append", default=[], help="a routing tag (repeatable)")
    explain.add_argument("--json", action="store_true", help="print the route record as JSON")
    health = commands.add_parser(
        "health",
        help="deployments with circuit state, stats and server load (self-hosted servers are probed once)",
    )
    health.add_argument("config", help="a YAML or TOML config file")
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _health(args: argparse.Namespace) -> int:
    """`health`: probe self-hosted load once and print every deployment's state."""
    import json

    import anyio
    from rich.console import Console
    from rich.table import Table

    from router.client import AsyncRouter
    from router.config import ConfigError
    from router.health import DeploymentHealth

    try:
        router = AsyncRouter.from_config(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1

    async def report() -> list[DeploymentHealth]:
        async with router:
            await router.probe_load()
            return await router.health()

    rows = anyio.run(report)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return 0
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)
    table = Table(title=f"{args.config}: deployments")

    def number(value: float | None, unit: str = "") -> str:
        return "–" if value is None else f"{value:.2f}{unit}"

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
            row.deployment,
            row.provider,
            state,
            f"{row.cooldown_remaining_s:.1f}s" if row.cooldown_remaining_s else "–",
            f"{row.failures}/{row.requests}",
            str(row.in_flight),
            number(row.ttft_s, "s"),
            number(row.latency_s, "s"),
            number(row.tokens_per_s),
            load,
            "ok" if row.limited_for_s is None else f"limited {row.limited_for_s:.0f}s",
        )
    console.print(table)
    return 0


def _explain(args: argparse.Namespace) -> int:
    """`explain`: rank without sending."""
    import json
    from functools import partial

    import anyio
    from rich.console import Console
    from rich.table import Table

    from router.client import AsyncRouter
    from router.config import ConfigError

    try:
        router = AsyncRouter.from_config(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    params: dict[str, object] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.tools:
        params["tools"] = [{"type": "function", "function": {"name": "tool", "parameters": {"type": "object"}}}]
    route: dict[str, object] = {"tags": args.tag}
    if args.policy:
        route["policy"] = args.policy
    explain = partial(
        router.explain,
        model=args.model,
        messages=[{"role": "user", "content": args.prompt}],
        route=route,
        stream=args.stream,
        **params,
    )
    try:
        record = anyio.run(explain)
    except (ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # openai's NotFoundError for an unknown model
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(record.to_dict(), indent=2, default=str))
        return 0
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)
    table = Table(title=f"{args.model}: policy {record.policy}")
    for column in (
        "#",
        "alias",
        "candidate",
        "$/M in",
        "$/M out",
        "exp. cost",
        "exp. TTFT",
        "exp. time",
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
            f"{line.load:.2f}",
            "ok" if line.limited_for_s is None else f"limited {line.limited_for_s:.0f}s",
        )
    console.print(table)
    for exclusion in record.excluded:
        console.print(f"[yellow]excluded[/] {exclusion.candidate}: {exclusion.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from router.demo import run_demo

        return run_demo(max(1, args.requests), as_json=args.json)
    if args.command == "explain":
        return _explain(args)
    if args.command == "health":
        return _health(args)
    if args.command == "check":
        import json

        from router.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            if args.json:
                print(json.dumps({"ok": False, "errors": [str(issue) for issue in exc.issues]}))
            else:
                for issue in exc.issues:
                    print(issue, file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps({"ok": True, "backends": list(config.backends), "models": list(config.models)}))
        else:
            print(f"{args.config}: ok ({len(config.backends)} backends, {len(config.models)} models)")
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())
