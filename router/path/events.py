"""What the request path tells the outside world: call and attempt events, fanned out to observers.

The path calls one `Observers` object at fixed points (a call starts, an attempt starts and
ends, the router falls over to another deployment, a call succeeds or fails, a circuit
changes state). Observers — user hooks, usage accounting, OpenTelemetry, Prometheus — each
implement the methods they need. An observer that raises is logged and skipped: telemetry
never breaks a request. Observers run inline on the event loop, so they must be quick.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from router.path.record import Attempt, RouteRecord

logger = logging.getLogger("router")

EventKind = Literal["call_start", "attempt_start", "attempt_end", "fallback", "success", "failure", "circuit_change"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


@dataclass(slots=True)
class CallInfo:
    """One call as observers see it: its route record (filled in as the call goes) and request."""

    record: RouteRecord
    request: Mapping[str, Any]
    """The request body as sent by the caller (messages, temperature, max_tokens, …)."""
    started_at: float = field(default_factory=time.time)
    """Wall-clock start (epoch seconds)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Per-call scratch space for observers (e.g. an open tracing span), dropped with the call."""


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """A deployment's circuit moved from one state to another."""

    deployment: str
    previous: str
    state: str
    """`closed`, `open` or `half_open`."""
    reason: str


@dataclass(frozen=True, slots=True)
class Event:
    """What a user hook receives; fields beyond `kind` are set as the kind needs them."""

    kind: EventKind
    record: RouteRecord | None = None
    """The call's route record (None for `circuit_change`)."""
    attempt: Attempt | None = None
    """`attempt_start` / `attempt_end`: the attempt (its `outcome` is final at `attempt_end`)."""
    error: BaseException | None = None
    """`failure`: the exception the caller gets (a stream's `StreamInterruptedError` included)."""
    from_deployment: str | None = None
    """`fallback`: the deployment that failed."""
    to_deployment: str | None = None
    """`fallback`: the deployment tried next."""
    circuit: CircuitChange | None = None


class Observer:
    """Base class with a no-op for every event; override the ones you need."""

    def call_started(self, call: CallInfo) -> None:
        """A call was resolved and is about to be served (from the cache or upstream)."""

    def attempt_started(self, call: CallInfo, attempt: Attempt) -> None:
        """A request is about to be sent to a deployment."""

    def attempt_ended(self, call: CallInfo, attempt: Attempt) -> None:
        """A sent request ended (`attempt.outcome`: `ok` or the failure kind; a stream's ends with the stream)."""

    def fell_back(self, call: CallInfo, from_deployment: str, to_deployment: str) -> None:
        """After a failure on `from_deployment` the router moves on to `to_deployment`."""

    def call_succeeded(self, call: CallInfo) -> None:
        """The caller got its answer (a stream: it ended cleanly or the caller closed it)."""

    def call_failed(self, call: CallInfo, error: BaseException) -> None:
        """The caller got an exception (a stream: it broke after the commit point)."""

    def circuit_changed(self, change: CircuitChange) -> None:
        """A deployment's circuit opened, half-opened (a probe) or closed."""

    def call_scope(self, call: CallInfo) -> contextlib.AbstractContextManager[object] | None:
        """A context the router serves the call in (tracing makes its span current); None: none needed.

        It is entered after `call_started`, in the caller's task, and left when the answer (or the
        stream's first chunk) is handed over."""
        return None


class Observers(Observer):
    """Fans every event out to the registered observers; one that raises is logged, never re-raised.

    Only observers that override a method are called for it, so an unused event costs a list scan.
    """

    _METHODS = (
        "call_started",
        "attempt_started",
        "attempt_ended",
        "fell_back",
        "call_succeeded",
        "call_failed",
        "circuit_changed",
        "call_scope",
    )

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers: list[Observer] = []
        self._targets: dict[str, list[Callable[..., object]]] = {name: [] for name in self._METHODS}
        for observer in observers or ():
            self.add(observer)

    def add(self, observer: Observer) -> Callable[[], None]:
        """Register an observer; returns a function that removes it."""
        self.observers.append(observer)
        self._retarget()

        def remove() -> None:
            if observer in self.observers:
                self.observers.remove(observer)
                self._retarget()

        return remove

    def _retarget(self) -> None:
        self._targets = {
            name: [getattr(o, name) for o in self.observers if getattr(type(o), name) is not getattr(Observer, name)]
            for name in self._METHODS
        }

    def _each(self, method: str, *args: Any) -> None:
        for target in self._targets[method]:
            try:
                target(*args)
            except Exception:
                owner = type(getattr(target, "__self__", target)).__name__
                logger.exception("observer %s raised in %s; ignored", owner, method)

    def call_started(self, call: CallInfo) -> None:
        self._each("call_started", call)

    def attempt_started(self, call: CallInfo, attempt: Attempt) -> None:
        self._each("attempt_started", call, attempt)

    def attempt_ended(self, call: CallInfo, attempt: Attempt) -> None:
        self._each("attempt_ended", call, attempt)

    def fell_back(self, call: CallInfo, from_deployment: str, to_deployment: str) -> None:
        self._each("fell_back", call, from_deployment, to_deployment)

    def call_succeeded(self, call: CallInfo) -> None:
        self._each("call_succeeded", call)

    def call_failed(self, call: CallInfo, error: BaseException) -> None:
        self._each("call_failed", call, error)

    def circuit_changed(self, change: CircuitChange) -> None:
        self._each("circuit_changed", change)

    def call_scope(self, call: CallInfo) -> contextlib.AbstractContextManager[object]:
        """Every observer's scope for the call, nested (a no-op when none has one)."""
        targets = self._targets["call_scope"]
        if not targets:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for target in targets:
            try:
                scope = target(call)
                if scope is not None:
                    stack.enter_context(scope)  # type: ignore[arg-type]
            except Exception:
                owner = type(getattr(target, "__self__", target)).__name__
                logger.exception("observer %s raised in call_scope; ignored", owner)
        return stack


Hook = Callable[[Event], object]


class Hooks(Observer):
    """User callbacks by event kind (`router.on("failure", fn)`); each gets an `Event`.

    Callbacks run inline on the router's event loop: keep them quick, hand slow work off.
    """

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {}

    def on(self, kind: EventKind, callback: Hook) -> Callable[[], None]:
        """Call `callback(event)` on every event of this kind; returns a function that unregisters it."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event {kind!r}; known: {', '.join(EVENT_KINDS)}")
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(type(callback).__call__):
            raise TypeError(
                "hooks are called synchronously on the router's event loop; pass a plain function "
                "(it may start a task of its own for slow work)"
            )
        callbacks = self._hooks.setdefault(kind, [])
        callbacks.append(callback)

        def remove() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return remove

    def _fire(self, event: Event) -> None:
        for callback in self._hooks.get(event.kind, ()):
            try:
                callback(event)
            except Exception:
                name = getattr(callback, "__qualname__", repr(callback))
                logger.exception("hook %s for %s raised; ignored", name, event.kind)

    def call_started(self, call: CallInfo) -> None:
        if "call_start" in self._hooks:
            self._fire(Event("call_start", call.record))

    def attempt_started(self, call: CallInfo, attempt: Attempt) -> None:
        if "attempt_start" in self._hooks:
            self._fire(Event("attempt_start", call.record, attempt=attempt))

    def attempt_ended(self, call: CallInfo, attempt: Attempt) -> None:
        if "attempt_end" in self._hooks:
            self._fire(Event("attempt_end", call.record, attempt=attempt))

    def fell_back(self, call: CallInfo, from_deployment: str, to_deployment: str) -> None:
        if "fallback" in self._hooks:
            self._fire(Event("fallback", call.record, from_deployment=from_deployment, to_deployment=to_deployment))

    def call_succeeded(self, call: CallInfo) -> None:
        if "success" in self._hooks:
            self._fire(Event("success", call.record))

    def call_failed(self, call: CallInfo, error: BaseException) -> None:
        if "failure" in self._hooks:
            self._fire(Event("failure", call.record, error=error))

    def circuit_changed(self, change: CircuitChange) -> None:
        if "circuit_change" in self._hooks:
            self._fire(Event("circuit_change", circuit=change))
