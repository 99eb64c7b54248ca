"""Live per-deployment stats, fed by every attempt and read by policies through a view.

Latency estimates are peak-EWMA (Tower's `PeakEwma`, after Finagle): a sample above the
estimate replaces it at once, one below blends in with weight `1 − exp(−elapsed/τ)`, and
reading decays the estimate toward zero with the same formula, so a deployment nobody has
used for a while looks cheap again and gets tried. All times are on the caller's clock
(`anyio.current_time()` in the router); nothing here reads a clock of its own.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from policies import DeploymentStats, StatsView
from providers import RateLimitInfo, RateLimitWindow
from providers.load import ServerLoad

DECAY_S = 10.0
"""τ of the peak-EWMA estimates: how fast an idle deployment's estimate fades."""
_SMOOTHING = 0.3
"""Weight of a new sample in the plain EWMAs (decode speed, cache share)."""
_ERROR_WINDOW_S = 30.0
"""τ of the decaying error rate."""
_SAMPLES = 64
"""Recent successful TTFT / latency samples kept per deployment, for the adaptive deadline."""
_MIN_SAMPLES = 8
_PAUSED_SHARE = 0.5
"""A timing at least this much garbage-collection pause is left out of the estimates (`router.path.pauses`)."""


@dataclass(slots=True)
class PeakEwma:
    """One latency estimate: peak-sensitive, decaying while unused toward the fastest this
    deployment has been seen to answer (not toward zero)."""

    estimate: float
    stamp: float
    floor: float = math.inf
    """The lowest sample seen: where an unused estimate decays to. Decaying to zero made an idle
    slow deployment look faster than a busy fast one whose samples carry the caller's own event-loop
    lag (`fastest` under concurrency); rediscovery of a deployment that got faster is the probes' job."""

    def __post_init__(self) -> None:
        self.floor = min(self.floor, self.estimate)

    def observe(self, sample: float, now: float) -> None:
        """Fold in a sample: a higher one wins at once, a lower one blends in."""
        if sample < self.floor:
            self.floor = sample
        if sample > self.estimate:
            self.estimate = sample
        else:
            weight = math.exp(-max(0.0, now - self.stamp) / DECAY_S)
            self.estimate = self.estimate * weight + sample * (1.0 - weight)
        self.stamp = now

    def read(self, now: float) -> float:
        """The estimate as of `now`, decayed toward the floor for the time since the last sample."""
        floor = self.floor
        return floor + (self.estimate - floor) * math.exp(-max(0.0, now - self.stamp) / DECAY_S)


def _mostly_pause(paused: float, seconds: float) -> bool:
    """Whether garbage-collection pauses took up at least `_PAUSED_SHARE` of a timing."""
    return paused > 0.0 and paused >= _PAUSED_SHARE * seconds


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + _SMOOTHING * (sample - old)


@dataclass(slots=True)
class _Deployment:
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    recent_failures: float = 0.0
    """Failures and attempts, each decayed with τ = `_ERROR_WINDOW_S`: their ratio is the recent error rate."""
    recent_attempts: float = 0.0
    error_stamp: float = 0.0
    ttft: PeakEwma | None = None
    latency: PeakEwma | None = None
    tokens_per_s: float | None = None
    cached_share: float | None = None
    last_used_at: float | None = None
    limited_until: float | None = None
    remaining_requests: tuple[float, float] | None = None
    """(remaining, valid until) from the last rate-limit headers."""
    remaining_tokens: tuple[float, float] | None = None
    ttft_samples: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    latency_samples: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the other router processes report of one deployment (shared state)."""

    in_flight: int = 0
    ttft_s: float | None = None
    latency_s: float | None = None
    tokens_per_s: float | None = None
    limited_until: float | None = None
    """On this process's clock."""
    remaining_requests: float | None = None
    remaining_tokens: float | None = None


@dataclass(slots=True)
class _Server:
    load: ServerLoad | None = None
    probe_ok: bool | None = None
    ours_at_report: int = 0
    """Our requests in flight to this server when its load was read: its `running` count includes them."""


class MemoryStats:
    """Process-local stats: cheap enough to update on every attempt."""

    def __init__(self) -> None:
        self._deployments: dict[str, _Deployment] = {}
        self._servers: dict[str, _Server] = {}
        self._peers: dict[str, PeerView] = {}

    def keep_only(self, candidate_ids: set[str]) -> None:
        """Forget deployments no longer configured (after a reload); the others keep their history."""
        for gone in set(self._deployments) - candidate_ids:
            del self._deployments[gone]
        for gone in set(self._peers) - candidate_ids:
            del self._peers[gone]

    def _get(self, candidate_id: str) -> _Deployment:
        found = self._deployments.get(candidate_id)
        if found is None:
            found = self._deployments[candidate_id] = _Deployment()
        return found

    def try_begin(self, candidate_id: str, now: float, *, cap: int | None = None) -> bool:
        """Count an attempt in flight, unless that would exceed `cap`; False means "full, skip it"."""
        deployment = self._get(candidate_id)
        if cap is not None and deployment.in_flight >= cap:
            return False
        deployment.in_flight += 1
        deployment.last_used_at = now
        return True

    def end(
        self,
        candidate_id: str,
        now: float,
        *,
        ok: bool,
        seconds: float,
        stream: bool = False,
        ttft_s: float | None = None,
        tokens_per_s: float | None = None,
        cached_share: float | None = None,
        paused_s: float = 0.0,
        ttft_paused_s: float = 0.0,
    ) -> None:
        """An attempt ended: fold its outcome and timings into the estimates.

        `paused_s` (`ttft_paused_s`): how long the process stood still collecting garbage during the
        attempt (before its first token). A timing that was mostly pause says nothing of the backend
        and is left out of the estimates; the outcome still counts."""
        d = self._get(candidate_id)
        d.in_flight = max(0, d.in_flight - 1)
        d.requests += 1
        weight = math.exp(-max(0.0, now - d.error_stamp) / _ERROR_WINDOW_S)
        d.recent_attempts = d.recent_attempts * weight + 1.0
        d.recent_failures = d.recent_failures * weight + (0.0 if ok else 1.0)
        d.error_stamp = now
        if not ok:
            d.failures += 1
            # a failure is a slow sample: it should not make a deployment look fast
            if not _mostly_pause(paused_s, seconds):
                self._observe(d, "ttft" if stream else "latency", seconds, now, only_up=True)
            return
        if stream:
            if ttft_s is not None and not _mostly_pause(ttft_paused_s, ttft_s):
                self._observe(d, "ttft", ttft_s, now)
                d.ttft_samples.append(ttft_s)
            decode_s = seconds - (ttft_s or 0.0)
            if tokens_per_s is not None and tokens_per_s > 0 and not _mostly_pause(paused_s - ttft_paused_s, decode_s):
                d.tokens_per_s = _ewma(d.tokens_per_s, tokens_per_s)
        elif not _mostly_pause(paused_s, seconds):
            self._observe(d, "latency", seconds, now)
            d.latency_samples.append(seconds)
        if cached_share is not None:
            d.cached_share = _ewma(d.cached_share, cached_share)

    @staticmethod
    def _observe(d: _Deployment, which: str, sample: float, now: float, *, only_up: bool = False) -> None:
        current: PeakEwma | None = getattr(d, which)
        if current is None:
            if not only_up:
                setattr(d, which, PeakEwma(sample, now))
        elif not only_up or sample > current.read(now):
            current.observe(sample, now)

    def observe_rate_limits(self, candidate_id: str, info: RateLimitInfo | None, now: float) -> None:
        """Remember when exhausted rate-limit headroom refills, so ranking avoids a certain 429."""
        if not info:
            return
        d = self._get(candidate_id)
        until = None
        for window in info.windows.values():
            if window.remaining is not None and window.remaining <= 0 and window.reset_s is not None:
                until = max(until or 0.0, now + window.reset_s)
        d.limited_until = until
        d.remaining_requests = _headroom(info.tightest("requests"), now)
        d.remaining_tokens = _headroom(info.tightest("tokens"), now)

    def observe_retry_after(self, candidate_id: str, seconds: float, now: float) -> None:
        """A 429 said when to come back."""
        d = self._get(candidate_id)
        d.limited_until = max(d.limited_until or 0.0, now + seconds)

    def observe_server_load(self, backend: str, load: ServerLoad | None) -> None:
        """A load probe answered (or, with None, did not)."""
        server = self._servers.setdefault(backend, _Server())
        server.probe_ok = load is not None
        if load is not None:
            server.load = load
            prefix = backend + "/"
            server.ours_at_report = sum(d.in_flight for cid, d in self._deployments.items() if cid.startswith(prefix))

    def first_token_percentile(self, candidate_id: str, *, stream: bool, percentile: float) -> float | None:
        """A high percentile of recent time-to-first-token (streams) or latency (non-streams); None
        until there are enough samples to say."""
        d = self._deployments.get(candidate_id)
        samples = None if d is None else (d.ttft_samples if stream else d.latency_samples)
        if not samples or len(samples) < _MIN_SAMPLES:
            return None
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(percentile * len(ordered)))]

    def apply_peers(self, candidate_id: str, peers: PeerView | None) -> None:
        """The other processes' latest report of a deployment (None: none of them has one)."""
        if peers is None:
            self._peers.pop(candidate_id, None)
        else:
            self._peers[candidate_id] = peers

    def local_report(self, candidate_id: str, now: float) -> dict[str, float | None] | None:
        """This process's own view of a deployment, to publish for the others."""
        d = self._deployments.get(candidate_id)
        if d is None:
            return None
        return {
            "in_flight": d.in_flight,
            "ttft_s": d.ttft.read(now) if d.ttft else None,
            "latency_s": d.latency.read(now) if d.latency else None,
            "tokens_per_s": d.tokens_per_s,
            "limited_for_s": (d.limited_until - now) if d.limited_until and d.limited_until > now else None,
            "remaining_requests": _current(d.remaining_requests, now),
            "remaining_tokens": _current(d.remaining_tokens, now),
        }

    def view(self, now: float) -> StatsSnapshot:
        """A read-only view as of `now`, for one ranking."""
        return StatsSnapshot(self, now)

    def snapshot(self, candidate_id: str, now: float) -> DeploymentStats | None:
        """What policies see of one deployment at `now`."""
        d = self._deployments.get(candidate_id)
        server = self._servers.get(candidate_id.split("/", 1)[0])
        peers = self._peers.get(candidate_id)
        if d is None and server is None and peers is None:
            return None
        d = d or _Deployment()
        p = peers or _NO_PEERS
        load = server.load if server else None
        limited = max((t for t in (d.limited_until, p.limited_until) if t is not None and t > now), default=None)
        return DeploymentStats(
            in_flight=d.in_flight + p.in_flight,
            requests=d.requests,
            failures=d.failures,
            error_rate=d.recent_failures / d.recent_attempts if d.recent_attempts else 0.0,
            ttft_s=_worst(d.ttft.read(now) if d.ttft else None, p.ttft_s),
            latency_s=_worst(d.latency.read(now) if d.latency else None, p.latency_s),
            tokens_per_s=d.tokens_per_s if d.tokens_per_s is not None else p.tokens_per_s,
            last_used_at=d.last_used_at,
            server_running=_running_now(load, server, d.in_flight),
            server_waiting=load.waiting if load else None,
            server_slots=load.slots if load else None,
            kv_cache_usage=load.kv_cache_usage if load else None,
            probe_ok=server.probe_ok if server else None,
            limited_until=limited,
            cached_share=d.cached_share or 0.0,
            remaining_requests=_least(_current(d.remaining_requests, now), p.remaining_requests),
            remaining_tokens=_least(_current(d.remaining_tokens, now), p.remaining_tokens),
        )


_NO_PEERS = PeerView()


def _running_now(load: ServerLoad | None, server: _Server | None, ours_now: int) -> int | None:
    """The server's running count brought up to date with ours: the other clients' share of its last
    report, plus what we have in flight now (a report up to one poll old would otherwise keep
    counting our requests that have since ended)."""
    if load is None or load.running is None or server is None:
        return None
    return max(0, load.running - server.ours_at_report) + ours_now


def _worst(mine: float | None, theirs: float | None) -> float | None:
    """Of two latency estimates, the higher (peak-EWMA's spirit: slowness shows at once)."""
    return mine if theirs is None else theirs if mine is None else max(mine, theirs)


def _least(mine: float | None, theirs: float | None) -> float | None:
    """Of two headroom readings, the tighter."""
    return mine if theirs is None else theirs if mine is None else min(mine, theirs)


def _headroom(window: RateLimitWindow | None, now: float) -> tuple[float, float] | None:
    if window is None or window.remaining is None:
        return None
    return window.remaining, now + (window.reset_s if window.reset_s is not None else 60.0)


def _current(headroom: tuple[float, float] | None, now: float) -> float | None:
    return headroom[0] if headroom is not None and headroom[1] > now else None


class StatsStore(Protocol):
    """What the request path needs of a stats home: in memory here, shared (Redis) later."""

    def try_begin(self, candidate_id: str, now: float, *, cap: int | None = None) -> bool: ...

    def end(
        self,
        candidate_id: str,
        now: float,
        *,
        ok: bool,
        seconds: float,
        stream: bool = False,
        ttft_s: float | None = None,
        tokens_per_s: float | None = None,
        cached_share: float | None = None,
        paused_s: float = 0.0,
        ttft_paused_s: float = 0.0,
    ) -> None: ...

    def observe_rate_limits(self, candidate_id: str, info: RateLimitInfo | None, now: float) -> None: ...

    def observe_retry_after(self, candidate_id: str, seconds: float, now: float) -> None: ...

    def observe_server_load(self, backend: str, load: ServerLoad | None) -> None: ...

    def first_token_percentile(self, candidate_id: str, *, stream: bool, percentile: float) -> float | None: ...

    def view(self, now: float) -> StatsView: ...


class StatsSnapshot:
    """`StatsView` over a `MemoryStats` at a fixed instant; each deployment's stats are read once
    (a ranking asks for them several times: screening, the policy, headroom, the trace)."""

    __slots__ = ("_now", "_seen", "_stats")

    def __init__(self, stats: MemoryStats, now: float) -> None:
        self._stats = stats
        self._now = now
        self._seen: dict[str, DeploymentStats | None] = {}

    def get(self, candidate_id: str) -> DeploymentStats | None:
        seen = self._seen
        if candidate_id in seen:
            return seen[candidate_id]
        found = seen[candidate_id] = self._stats.snapshot(candidate_id, self._now)
        return found
