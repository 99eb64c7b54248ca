"""Selection policies: pure functions of candidates and live stats, no I/O.

`get_policy(name)` returns a registered policy; `register(name, factory)` adds a user's own.
Built in: `cheapest`, `fastest`, `least-loaded`, `weighted` and `ordered`. The estimates they
rank by (expected cost, time, load) live in `policies.estimates`, for the router's constraint
checks and explain output too.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.base import Candidate, DeploymentStats, NoStats, Policy, Price, RequestProfile, StatsView
from policies.cheapest import Cheapest
from policies.fastest import Fastest
from policies.least_loaded import LeastLoaded
from policies.ordered import Ordered
from policies.weighted import Weighted

_REGISTRY: dict[str, Callable[[], Policy]] = {
    "cheapest": Cheapest,
    "fastest": Fastest,
    "least-loaded": LeastLoaded,
    "ordered": Ordered,
    "weighted": Weighted,
}


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
    "Cheapest",
    "DeploymentStats",
    "Fastest",
    "LeastLoaded",
    "NoStats",
    "Ordered",
    "Policy",
    "Price",
    "RequestProfile",
    "StatsView",
    "Weighted",
    "get_policy",
    "known_policies",
    "register",
]
