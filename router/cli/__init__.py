"""The `inference-router` command: `chat`, `explain`, `health`, `usage`, `check` and `demo`.

Only argparse is imported up front, so `inference-router --help` starts in milliseconds; each
command imports what it needs (openai, rich, the router) when it runs.

Exit codes, the same for every command:

- 0: done;
- 1: the config is invalid or unreadable (every problem printed as `file:line: path: message`),
  `explain` names a model the config does not serve, `usage` has no file to read, or `demo`
  lacks the `local` extra (`serve` the `gateway` extra);
- 2: bad usage: an unknown option, a malformed value (argparse's own code);
- 3: the router could not serve the call (`chat`): the error class, its message and every attempt;
- 130: interrupted (Ctrl-C).

With `--json`, stdout holds exactly one JSON document — on failure too, with an `error` object
(`check` reports `{"ok": false, "errors": [...]}`) — and stderr stays quiet apart from progress
shown on a terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_CALL_FAILED = 3
EXIT_INTERRUPTED = 130

_COMMANDS: dict[str, str] = {
    "chat": "router.cli.chat:run_chat",
    "explain": "router.cli.explain:run_explain",
    "health": "router.cli.health:run_health",
    "usage": "router.cli.usage:run_usage",
    "check": "router.cli.check:run_check",
    "demo": "router.cli.demo:run_demo_command",
    "serve": "router.gateway.command:run_serve",
}
"""Each command's implementation, imported only when that command runs."""

_EXIT_CODES = """\
exit codes:
  0  ok
  1  invalid or missing config (every problem as file:line: path: message), unknown model
     (explain), no usage file (usage), missing `local` extra (demo)
     or `gateway` extra (serve)
  2  bad usage (unknown option, malformed value, unknown --policy)
  3  the call failed (chat): error class, message and attempts on stderr
  130  interrupted (Ctrl-C)
"""


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    examples: str,
    *,
    config: str | None = "required",
) -> argparse.ArgumentParser:
    """Add a subcommand with a description, an `examples:` epilog, a CONFIG argument and `--json`."""
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + "".join(f"  {line}\n" for line in examples.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if config == "required":
        parser.add_argument("config", metavar="CONFIG", help="a router config file (YAML or TOML)")
    elif config == "optional":
        parser.add_argument(
            "config", metavar="CONFIG", nargs="?", help="a router config file (YAML or TOML); its usage.path is read"
        )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-router",
        description=(
            "Route OpenAI-style chat completions across LLM backends (DeepSeek, Groq, Cerebras, vLLM,\n"
            "llama.cpp, any OpenAI-compatible endpoint), and see what the router did.\n"
            "Every command takes --json for scripts."
        ),
        epilog=(
            "examples:\n"
            "  inference-router demo                                   # no keys, no network\n"
            "  inference-router check examples/router.yaml\n"
            '  inference-router chat examples/router.yaml -m gpt-oss-120b "Say hi"\n'
            '  inference-router explain examples/router.yaml -m gpt-oss-120b --prompt "hello"\n'
            "  inference-router health examples/router.yaml\n"
            "  inference-router usage --db usage.sqlite --since 1d --by backend,model\n"
            "  inference-router serve examples/router.yaml --port 8080    # an OpenAI-compatible HTTP gateway\n\n"
            "Run `inference-router COMMAND --help` for a command's options and examples.\n\n" + _EXIT_CODES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = _command(
        commands,
        "chat",
        "send one chat completion through the router and stream the answer",
        "Send PROMPT to MODEL through the router, stream the answer to stdout as it arrives, then print\n"
        "one line to stderr saying which backend served it, how long it took, the tokens, the cost,\n"
        "the matched rule and every attempt. Exit 3 (error class, message and attempts on stderr)\n"
        "when the router cannot serve it.",
        """
inference-router chat examples/router.yaml -m gpt-oss-120b "Say hi"
inference-router chat examples/router.yaml -m gpt-oss-120b --policy cheapest --tag batch "Summarise: ..."
echo "Explain BGP" | inference-router chat examples/router.yaml -m local -
inference-router chat examples/router.yaml -m gpt-oss-120b --json "Say hi" | jq .route.backend
""",
    )
    chat.add_argument(
        "--model", "-m", required=True, metavar="MODEL", help="an alias from the config, or a deployment's model id"
    )
    chat.add_argument("prompt", metavar="PROMPT", help="the user message; `-` reads it from stdin")
    chat.add_argument("--system", "-s", default=None, metavar="TEXT", help="a system message sent before the prompt")
    chat.add_argument("--max-tokens", type=int, default=None, metavar="N", help="max_tokens of the request")
    chat.add_argument(
        "--temperature", type=float, default=None, metavar="T", help="sampling temperature of the request"
    )
    chat.add_argument(
        "--tag", action="append", default=[], metavar="TAG", help="a routing tag (repeatable); usage is counted by tag"
    )
    chat.add_argument(
        "--policy", default=None, metavar="NAME", help="rank with this policy for this call (e.g. cheapest, fastest)"
    )
    chat.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up on the whole call after this many seconds",
    )
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer instead of streaming it")

    explain = _command(
        commands,
        "explain",
        "show how a request would be routed, without sending it",
        "Show how a request would be routed, without sending anything: the config rule that matched,\n"
        "every candidate in rank order with the inputs the policy saw (price, expected cost, TTFT,\n"
        "load, rate-limit headroom), and each excluded deployment with its reason.",
        """
inference-router explain examples/router.yaml -m gpt-oss-120b --prompt "hello"
inference-router explain examples/router.yaml -m gpt-oss-120b --policy cheapest --tag batch
inference-router explain examples/router.yaml -m gpt-oss-120b --tools --max-tokens 4000 --json
""",
    )
    explain.add_argument(
        "--model", "-m", required=True, metavar="MODEL", help="an alias from the config, or a deployment's model id"
    )
    explain.add_argument(
        "--prompt", default="Hello!", metavar="TEXT", help="the user message (its length drives the estimates)"
    )
    explain.add_argument("--max-tokens", type=int, default=None, metavar="N", help="max_tokens of the request")
    explain.add_argument("--stream", action="store_true", help="explain a streamed request")
    explain.add_argument("--tools", action="store_true", help="the request uses tools")
    explain.add_argument("--policy", default=None, metavar="NAME", help="override the policy (a per-call hint)")
    explain.add_argument("--tag", action="append", default=[], metavar="TAG", help="a routing tag (repeatable)")

    _command(
        commands,
        "health",
        "every deployment's circuit state, stats, server load and headroom",
        "Probe self-hosted servers (vLLM, llama.cpp) once for their load, then show every deployment:\n"
        "circuit state and cooldown, recent errors, in-flight requests, TTFT, latency, tokens/s,\n"
        "server load and rate-limit headroom. A fresh process has no traffic stats yet; the probes\n"
        "are live.",
        """
inference-router health examples/router.yaml
inference-router health examples/router.yaml --json | jq '.[] | select(.state != "closed")'
""",
    )

    usage = _command(
        commands,
        "usage",
        "requests, tokens and cost recorded by the router's usage ledger",
        "Add up the calls recorded in a usage file (the SQLite file routers write when the config sets\n"
        "`usage: {path: ...}`; every process and run that shares the file is counted): requests,\n"
        "attempts, errors, failed calls, tokens in/out/cached, cache hits and cost, grouped as asked.\n"
        "The file is --db, else CONFIG's usage.path. Grouped by tag, a call with several tags is\n"
        "counted under each; the total counts it once.",
        """
inference-router usage router.yaml                      # a config whose usage.path is set
inference-router usage --db ~/.cache/router-usage.sqlite --since 1d --by backend,model
inference-router usage router.yaml --since 2w --by tag --json
inference-router usage router.yaml --since 1d --by key          # spend per gateway key
""",
        config="optional",
    )
    usage.add_argument("--db", default=None, metavar="PATH", help="the usage file (default: CONFIG's usage.path)")
    usage.add_argument(
        "--since",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="only the last DURATION: 90s, 30m, 3h, 1d, 2w (default: everything; resolution one minute)",
    )
    usage.add_argument(
        "--by",
        type=_group_keys,
        default=("backend", "model", "tag"),
        metavar="KEYS",
        help="comma-separated: backend, provider, model, alias, tag, key (the gateway key; default backend,model,tag)",
    )

    check = _command(
        commands,
        "check",
        "validate a config file; exit 1 listing every error as file:line",
        "Validate a config file without contacting any backend. Every problem is listed at once as\n"
        "file:line: path: message, and the exit code is 1.",
        """
inference-router check examples/router.yaml
inference-router check router.toml --json
""",
    )
    del check  # no options beyond CONFIG and --json

    demo = _command(
        commands,
        "demo",
        "route requests across three local llama.cpp servers, killing two midway (no keys needed)",
        "Start three llama.cpp servers on loopback serving tiny random-weight models (generated on the\n"
        "spot: the text is noise, the routing is real), send requests through examples/demo.yaml and\n"
        "kill two servers midway, so the router falls over. Needs the `local` extra.",
        """
inference-router demo
inference-router demo --requests 30
inference-router demo --json | jq '.[].route.backend'
""",
        config=None,
    )
    demo.add_argument("--requests", type=int, default=12, metavar="N", help="how many requests to send (default 12)")

    serve = _command(
        commands,
        "serve",
        "serve the router over HTTP: an OpenAI-compatible gateway for any language",
        "Serve CONFIG's router as an OpenAI-compatible HTTP gateway: /v1/chat/completions, /v1/completions,\n"
        "/v1/embeddings, /v1/responses and /v1/models, with the config's `gateway:` keys, limits and\n"
        "budgets, plus /healthz, /readyz, /metrics and /admin/*. One router per worker process; with\n"
        "`state: {backend: redis}` the workers (and replicas) share limits, circuits and stats.\n"
        "SIGTERM finishes requests in flight (up to gateway.shutdown_grace_s); SIGHUP reloads.",
        """
inference-router serve router.yaml
inference-router serve router.yaml --host 0.0.0.0 --port 8080 --workers 4
curl localhost:8080/v1/chat/completions -H "Authorization: Bearer $KEY" \\
  -d '{"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "Hi"}]}'
""",
    )
    serve.add_argument("--host", default=None, help="listen address (default: gateway.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default: gateway.port, 8080; 0: any free)")
    serve.add_argument(
        "--workers", type=int, default=None, metavar="N", help="worker processes (default: gateway.workers, 1)"
    )
    return parser


def _duration(text: str) -> float:
    """argparse type for `--since`: `1d` → 86400.0 (a bad value is a usage error, exit 2)."""
    from router.observe.usage import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _group_keys(text: str) -> tuple[str, ...]:
    """argparse type for `--by`: `backend,model` → ("backend", "model"), each checked."""
    from router.observe.usage import GROUP_KEYS

    keys = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [key for key in keys if key not in GROUP_KEYS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown key {', '.join(unknown)}; choose from {', '.join(GROUP_KEYS)}")
    return keys


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default `sys.argv[1:]`), run the command, return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed why
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    module, _, function = _COMMANDS[args.command].partition(":")
    command: Callable[[argparse.Namespace], int] = getattr(import_module(module), function)
    try:
        return command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    """Console-script entry point (`inference-router`): exit with `main`'s code."""
    sys.exit(main())
