"""What the commands share: loading a config with every problem reported, JSON output, consoles, hints.

Imported only by the commands themselves (never by `inference-router --help`), so it may import
rich and the config machinery at the top.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from rich.console import Console

from router.config import ConfigError, ConfigIssue, RouterConfig, load_config
from router.path.hints import RouteHints


def print_json(data: Any) -> None:
    """One JSON document on stdout (datetimes and other strays as strings)."""
    print(json.dumps(data, indent=2, default=str))


def issue_dict(issue: ConfigIssue) -> dict[str, Any]:
    """A config problem as JSON data: file, line (None when unknown), field path, message."""
    return {"file": issue.source, "line": issue.line, "path": issue.path, "message": issue.message}


def config_error_dict(error: ConfigError) -> dict[str, Any]:
    """The `error` object of a command's JSON output when the config is invalid."""
    count = len(error.issues)
    return {
        "type": "ConfigError",
        "message": f"invalid router config ({count} problem{'s' if count != 1 else ''})",
        "issues": [issue_dict(issue) for issue in error.issues],
    }


def report_config_error(error: ConfigError, *, as_json: bool) -> None:
    """Every problem as `file:line: path: message` on stderr, or as JSON on stdout with `--json`."""
    if as_json:
        print_json({"error": config_error_dict(error)})
    else:
        for issue in error.issues:
            print(issue, file=sys.stderr)


def load(path: str | os.PathLike[str], *, as_json: bool) -> RouterConfig | None:
    """The validated config, or None after reporting why it is not valid (the caller exits 1)."""
    try:
        return load_config(path)
    except ConfigError as error:
        report_config_error(error, as_json=as_json)
        return None


def error_message(error: BaseException) -> str:
    """An exception's message without openai's `Error code: 404 - {...}` wrapping."""
    message = getattr(error, "message", None)
    return message if isinstance(message, str) and message else str(error) or type(error).__name__


def error_dict(error: BaseException) -> dict[str, Any]:
    """A failed call's exception as JSON data: class, message, HTTP status and every attempt."""
    data: dict[str, Any] = {"type": type(error).__name__, "message": error_message(error)}
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        data["status_code"] = status
    for name in ("retry_after", "partial_text"):
        value = getattr(error, name, None)
        if value is not None and value != "":
            data[name] = value
    data["attempts"] = [asdict(attempt) for attempt in getattr(error, "attempts", None) or []]
    return data


def hints_message(error: ValueError) -> str:
    """What is wrong with a routing hint, without pydantic's boilerplate around it."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        return "; ".join(str(e.get("msg", e)).removeprefix("Value error, ") for e in errors())
    return str(error)


def route_hints(tags: list[str], policy: str | None, deadline_s: float | None = None) -> RouteHints:
    """The `route=` hints of the command's options; a bad value raises ValueError (see `hints_message`)."""
    hints: dict[str, Any] = {"tags": tuple(tags)}
    if policy:
        hints["policy"] = policy
    if deadline_s is not None:
        hints["deadline_s"] = deadline_s
    return RouteHints.coerce(hints)


def stdout_console() -> Console:
    """The console tables go to: at least 140 columns wide when stdout is a file or a pipe."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)
    return console


def progress_console(*, as_json: bool) -> Console | None:
    """A stderr console for spinners and progress bars: None unless stderr is a terminal and output is text.

    Progress is for people watching; a pipe, a log file or a `--json` consumer gets none of it.
    """
    if as_json:
        return None
    console = Console(stderr=True)
    return console if console.is_terminal else None


@contextlib.contextmanager
def spinner(console: Console | None, text: str) -> Iterator[None]:
    """A transient spinner with `text` on `console` while the block runs (nothing when `console` is None)."""
    if console is None:
        yield
        return
    with console.status(text):
        yield
