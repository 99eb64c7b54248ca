"""The `inference-router` command: `demo` and `check` (more commands arrive with the CLI issue)."""

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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from router.demo import run_demo

        return run_demo(max(1, args.requests), as_json=args.json)
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
