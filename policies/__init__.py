"""Selection policies: pure functions of candidates and live stats, no I/O.

`get_policy(name)` returns a registered policy; `register(cls)` adds a user's own.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.base import Candidate, DeploymentStats, NoStats, Policy, StatsView
from policies.ordered import Ordered

_REGISTRY: dict[str, Callable[[], Policy]] = {"ordered": Ordered}


def register(name: str, factory: Callable[[], Policy]) -> None:
    """Make a policy selectable by name in config and per-call hints."""
    _REGISTRY[name] = factory


def known_policies() -> list[str]:
    """Names accepted by `get_policy`."""
    return sorted(_REGISTRY)


def get_policy(name: str) -> Policy:
    """A fresh policy instance by name; KeyError lists the known names."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(known_policies())}") from None


__all__ = [
    "Candidate",
    "DeploymentStats",
    "NoStats",
    "Ordered",
    "Policy",
    "StatsView",
    "get_policy",
    "known_policies",
    "register",
]
