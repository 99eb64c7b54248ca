"""`inference-router check`: validate a config file without contacting any backend."""

from __future__ import annotations

import argparse
import sys

from router.cli import EXIT_CONFIG, EXIT_OK
from router.cli.common import issue_dict, print_json
from router.config import ConfigError, load_config


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 with a one-line summary, or 1 listing every problem (as `file:line: path: message`, or JSON)."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        if args.json:
            print_json({"ok": False, "errors": [issue_dict(issue) for issue in error.issues]})
        else:
            for issue in error.issues:
                print(issue, file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print_json({"ok": True, "backends": list(config.backends), "models": list(config.models)})
    else:
        print(f"{args.config}: ok ({len(config.backends)} backends, {len(config.models)} models)")
    return EXIT_OK
