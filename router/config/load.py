"""Reading a config: YAML/TOML files or mappings, `${VAR}` interpolation, and errors that point home.

A bad config raises `ConfigError` listing every problem at once, each with the file, the line
and the field's path (`router.yaml:12: models.chat.deployments[0].backend: unknown backend`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from providers import PROVIDERS
from router.config.checks import cross_references, rule_problems
from router.config.schema import ConfigError, ConfigIssue, Path_, RouterConfig, format_path

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _yaml_with_lines(text: str, lines: dict[Path_, int]) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()

        def build(node: yaml.Node, path: Path_) -> Any:
            lines.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)
                out: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    key = loader.construct_object(key_node)
                    lines[(*path, key)] = key_node.start_mark.line + 1
                    out[key] = build(value_node, (*path, key))
                return out
            if isinstance(node, yaml.SequenceNode):
                return [build(item, (*path, i)) for i, item in enumerate(node.value)]
            return loader.construct_object(node)

        return None if node is None else build(node, ())
    finally:
        loader.dispose()


def _toml_lines(text: str, data: Any, lines: dict[Path_, int]) -> None:
    """Best-effort line numbers for TOML (tomllib keeps none): find each key under its table."""
    source = text.splitlines()
    table: Path_ = ()
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*$")
    key_line = re.compile(r'^\s*("?[^"=\s]+"?(?:\s*\.\s*"?[^"=\s]+"?)*)\s*=')
    counts: dict[Path_, int] = {}
    for number, line in enumerate(source, start=1):
        if m := header.match(line):
            table = tuple(p.strip().strip('"') for p in m.group(2).split("."))
            lines.setdefault(table, number)
            if m.group(1) == "[[":  # an array of tables: `[[rules]]` is rules[0], then rules[1], …
                index = counts[table] = counts.get(table, -1) + 1
                table = (*table, index)
                lines.setdefault(table, number)
        elif m := key_line.match(line):
            key = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            lines.setdefault((*table, *key), number)


def _interpolate(value: Any, path: Path_, env: Mapping[str, str], issues: list[tuple[Path_, str]]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), env, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), env, issues) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            issues.append((path, f"environment variable {name} is not set"))
            return ""

        return _ENV_REF.sub(replace, value)
    return value


def _line_for(path: Path_, lines: Mapping[Path_, int]) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> RouterConfig:
    """Read and validate a config from a YAML/TOML file path or a mapping; raise ConfigError."""
    env = os.environ if env is None else env
    lines: dict[Path_, int] = {}
    if isinstance(source, Mapping):
        name, raw = "<config>", dict(source)
    else:
        path = Path(source)
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([ConfigIssue(name, None, "", f"cannot read the file: {exc.strerror or exc}")]) from None
        try:
            if path.suffix.lower() == ".toml":
                raw = tomllib.loads(text)
                _toml_lines(text, raw, lines)
            else:
                raw = _yaml_with_lines(text, lines)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else None
            raise ConfigError([ConfigIssue(name, line, "", f"not valid YAML: {exc.problem}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([ConfigIssue(name, None, "", f"not valid TOML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue(name, 1, "", "the config must be a mapping with `backends` and `models`")])

    problems: list[tuple[Path_, str]] = []
    raw = _interpolate(raw, (), env, problems)
    config: RouterConfig | None = None
    try:
        config = RouterConfig.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc: Path_ = tuple(error["loc"])
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            elif error["type"] == "value_error":
                message = message.removeprefix("Value error, ")
            elif error["type"] == "literal_error" and loc and loc[-1] == "provider":
                message = f"unknown provider {error.get('input')!r}; known: {', '.join(PROVIDERS)}"
            problems.append((loc, message))
    problems.extend(cross_references(raw))
    problems.extend(rule_problems(raw, lambda path: _line_for(path, lines)))
    if problems:
        issues = [ConfigIssue(name, _line_for(p, lines), format_path(p), m) for p, m in problems]
        raise ConfigError(sorted(issues, key=lambda i: (i.line or 0, i.path)))
    assert config is not None
    return config
