"""`inference-router demo`: see `router.local.demo`."""

from __future__ import annotations

import argparse


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo with `--requests` requests (at least one)."""
    from router.local.demo import run_demo

    return run_demo(max(1, args.requests), as_json=args.json)
