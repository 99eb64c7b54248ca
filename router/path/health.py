"""`router.health()`: each deployment's circuit, recent errors, live stats and server load."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from router.config.routes import RouteTable
from router.path.circuit import Circuits
from router.path.stats import StatsStore


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """One deployment as the router sees it now."""

    deployment: str
    backend: str
    provider: str
    model: str
    state: str
    """`closed` (in use), `open` (skipped until its cooldown ends) or `half_open` (one probe at a time)."""
    cooldown_remaining_s: float
    opened_by: str
    consecutive_failures: int
    error_rate: float
    recent_errors: tuple[str, ...]
    in_flight: int
    requests: int
    failures: int
    ttft_s: float | None
    latency_s: float | None
    tokens_per_s: float | None
    server_running: int | None
    server_waiting: int | None
    server_slots: int | None
    probe_ok: bool | None
    limited_for_s: float | None
    """Seconds until exhausted rate-limit headroom refills."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        return asdict(self)


def health_report(table: RouteTable, stats: StatsStore, circuits: Circuits, now: float) -> list[DeploymentHealth]:
    """Every configured deployment, once, in config order."""
    view = stats.view(now)
    seen: dict[str, DeploymentHealth] = {}
    for route in table.routes.values():
        for deployment in route.deployments:
            c = deployment.candidate
            if c.id in seen:
                continue
            s = view.get(c.id)
            circuit = circuits.view(c.id, now)
            seen[c.id] = DeploymentHealth(
                deployment=c.id,
                backend=c.backend,
                provider=c.provider,
                model=c.model,
                state=circuit.state.value,
                cooldown_remaining_s=circuit.cooldown_remaining_s,
                opened_by=circuit.opened_by,
                consecutive_failures=circuit.consecutive_failures,
                error_rate=circuit.recent_error_rate,
                recent_errors=circuit.recent_errors,
                in_flight=s.in_flight if s else 0,
                requests=s.requests if s else 0,
                failures=s.failures if s else 0,
                ttft_s=s.ttft_s if s else None,
                latency_s=s.latency_s if s else None,
                tokens_per_s=s.tokens_per_s if s else None,
                server_running=s.server_running if s else None,
                server_waiting=s.server_waiting if s else None,
                server_slots=s.server_slots if s else None,
                probe_ok=s.probe_ok if s else None,
                limited_for_s=(s.limited_until - now) if s and s.limited_until is not None else None,
            )
    return list(seen.values())
