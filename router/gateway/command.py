"""`inference-router serve`: check the config, then hand over to the gateway's server.

The command lives with the gateway (the CLI names it only as a string), so nothing below the
gateway imports it.
"""

from __future__ import annotations

import argparse

from router.cli import EXIT_CONFIG
from router.cli.common import load


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C; exit 1 on an invalid config (every problem as file:line) or without
    the `gateway` extra (as `demo` without `local`)."""
    config = load(args.config, as_json=args.json)
    if config is None:
        return EXIT_CONFIG
    try:
        from router.gateway.server import serve
    except ImportError as exc:  # uvicorn is the `gateway` extra
        print(f"error: the gateway needs the `gateway` extra: pip install 'inference-router[gateway]' ({exc})")
        return EXIT_CONFIG
    return serve(args.config, config, host=args.host, port=args.port, workers=args.workers)
