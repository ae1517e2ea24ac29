"""A circuit breaker per dependency: permission-based, clock-driven, no lock across calls.

Usage: `if breaker.acquire(): call; breaker.on_success(d) / on_failure(d)`;
`release()` hands a permit back unused (e.g. the call failed on bad input,
which is the caller's fault, not the dependency's). Each state is an object;
`TRANSITIONS` is the table of legal moves. The only lock guards a few field
updates and is never held while the protected call runs or a listener runs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Final

from scorers.clock import Clock
from scorers.config import BreakerConfig


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.CLOSED: frozenset({State.OPEN, State.FORCED_OPEN, State.DISABLED}),
    State.OPEN: frozenset({State.HALF_OPEN, State.CLOSED, State.FORCED_OPEN, State.DISABLED}),
    State.HALF_OPEN: frozenset({State.CLOSED, State.OPEN, State.FORCED_OPEN, State.DISABLED}),
    State.FORCED_OPEN: frozenset({State.CLOSED, State.DISABLED}),
    State.DISABLED: frozenset({State.CLOSED, State.FORCED_OPEN}),
}

TransitionHook = Callable[[str, str, str], None]  # (dependency, from_state, to_state)


class IllegalTransition(RuntimeError):
    pass


class _Window:
    """Sliding window of call outcomes: the last N calls, or the last N seconds."""

    def __init__(self, config: BreakerConfig, clock: Clock) -> None:
        self._time_based = config.window_type == "time"
        self._size = config.window_size
        self._clock = clock
        # entries: (second bucket or 0, failed, slow)
        self._calls: deque[tuple[int, bool, bool]] = deque()
        self.total = self.failures = self.slow = 0

    def add(self, failed: bool, slow: bool) -> None:
        bucket = int(self._clock.monotonic()) if self._time_based else 0
        self._calls.append((bucket, failed, slow))
        self.total += 1
        self.failures += failed
        self.slow += slow
        self._evict()

    def _evict(self) -> None:
        if self._time_based:
            oldest = int(self._clock.monotonic()) - self._size + 1
            while self._calls and self._calls[0][0] < oldest:
                self._drop()
        while len(self._calls) > self._size and not self._time_based:
            self._drop()

    def _drop(self) -> None:
        _, failed, slow = self._calls.popleft()
        self.total -= 1
        self.failures -= failed
        self.slow -= slow

    def rates(self) -> tuple[int, float, float]:
        self._evict()
        if not self.total:
            return 0, 0.0, 0.0
        return self.total, self.failures / self.total, self.slow / self.total


class _StateObj:
    """One state of the machine; returns the next state or None to stay."""

    name: State

    def try_acquire(self, now_s: float) -> tuple[bool, State | None]:
        raise NotImplementedError

    def record(self, failed: bool, slow: bool) -> State | None:
        return None

    def release(self) -> None:
        return None


class _Closed(_StateObj):
    name = State.CLOSED

    def __init__(self, config: BreakerConfig, clock: Clock) -> None:
        self._config = config
        self._window = _Window(config, clock)

    def try_acquire(self, now_s: float) -> tuple[bool, State | None]:
        return True, None

    def record(self, failed: bool, slow: bool) -> State | None:
        self._window.add(failed, slow)
        total, failure_rate, slow_rate = self._window.rates()
        if total < self._config.minimum_calls:
            return None
        if (failure_rate >= self._config.failure_rate_threshold
                or slow_rate >= self._config.slow_call_rate_threshold):
            return State.OPEN
        return None


class _Open(_StateObj):
    name = State.OPEN

    def __init__(self, until_s: float) -> None:
        self.until_s = until_s

    def try_acquire(self, now_s: float) -> tuple[bool, State | None]:
        return (False, State.HALF_OPEN) if now_s >= self.until_s else (False, None)


class _HalfOpen(_StateObj):
    name = State.HALF_OPEN

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self._permits = config.half_open_trial_calls
        self._results = 0
        self._failures = 0
        self._slow = 0

    def try_acquire(self, now_s: float) -> tuple[bool, State | None]:
        if self._permits <= 0:
            return False, None
        self._permits -= 1
        return True, None

    def release(self) -> None:
        self._permits = min(self._permits + 1, self._config.half_open_trial_calls)

    def record(self, failed: bool, slow: bool) -> State | None:
        self._results += 1
        self._failures += failed
        self._slow += slow
        trials = self._config.half_open_trial_calls
        if self._results < trials:
            return None
        bad = (self._failures / trials >= self._config.failure_rate_threshold
               or self._slow / trials >= self._config.slow_call_rate_threshold)
        return State.OPEN if bad else State.CLOSED


class _Fixed(_StateObj):
    """FORCED_OPEN (never permits) and DISABLED (always permits, records nothing)."""

    def __init__(self, name: State) -> None:
        self.name = name

    def try_acquire(self, now_s: float) -> tuple[bool, State | None]:
        return self.name is State.DISABLED, None


class CircuitBreaker:
    def __init__(self, name: str, config: BreakerConfig, clock: Clock,
                 on_transition: TransitionHook | None = None) -> None:
        self.name = name
        self._config = config
        self._clock = clock
        self._hook = on_transition
        self._lock = threading.Lock()
        self._opens_in_a_row = 0
        self._state: _StateObj = _Closed(config, clock)
        self.reason = ""  # why it was last forced open, for operators

    @property
    def state(self) -> State:
        return self._state.name

    def acquire(self) -> bool:
        """Permission to call the dependency now."""
        with self._lock:
            allowed, nxt = self._state.try_acquire(self._clock.monotonic())
            moved = self._move(nxt) if nxt else None
            if moved:
                allowed, _ = self._state.try_acquire(self._clock.monotonic())
        self._notify(moved)
        return allowed

    def on_success(self, duration_s: float) -> None:
        self._record(False, duration_s)

    def on_failure(self, duration_s: float) -> None:
        self._record(True, duration_s)

    def release(self) -> None:
        """Give back a permit without a verdict (bad input, call not made)."""
        with self._lock:
            self._state.release()

    def force_open(self, reason: str = "operator") -> None:
        self._goto(State.FORCED_OPEN)
        self.reason = reason

    def disable(self) -> None:
        self._goto(State.DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with an empty window and backoff, from any state."""
        with self._lock:
            before = self._state.name
            self._opens_in_a_row = 0
            self._state = _Closed(self._config, self._clock)
            self.reason = ""
        self._notify((before, State.CLOSED) if before is not State.CLOSED else None)

    def _goto(self, target: State) -> None:
        with self._lock:
            moved = self._move(target)
        self._notify(moved)

    def _record(self, failed: bool, duration_s: float) -> None:
        slow = duration_s >= self._config.slow_call_duration_s
        with self._lock:
            nxt = self._state.record(failed, slow)
            moved = self._move(nxt) if nxt else None
        self._notify(moved)

    def _move(self, target: State) -> tuple[State, State] | None:
        """Swap the state object; caller holds the lock. Returns (from, to)."""
        current = self._state.name
        if target is current:
            return None
        if target not in TRANSITIONS[current]:
            raise IllegalTransition(f"{self.name}: {current.value} -> {target.value}")
        self._state = self._make(target)
        return current, target

    def _make(self, target: State) -> _StateObj:
        if target is State.CLOSED:
            self._opens_in_a_row = 0
            return _Closed(self._config, self._clock)
        if target is State.OPEN:
            self._opens_in_a_row += 1
            cfg = self._config
            wait_s = min(cfg.max_open_wait_s,
                         cfg.open_wait_s * cfg.open_wait_multiplier ** (self._opens_in_a_row - 1))
            return _Open(self._clock.monotonic() + wait_s)
        if target is State.HALF_OPEN:
            return _HalfOpen(self._config)
        return _Fixed(target)

    def _notify(self, moved: tuple[State, State] | None) -> None:
        if moved and self._hook is not None:
            try:
                self._hook(self.name, moved[0].value, moved[1].value)
            except Exception:  # noqa: BLE001 - a hook must not break the breaker
                pass

    def open_until_s(self) -> float | None:
        """When an OPEN breaker will next allow a trial call (None unless OPEN)."""
        state = self._state
        return state.until_s if isinstance(state, _Open) else None
