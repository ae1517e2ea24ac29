"""Injected clocks: a monotonic clock for budgets, a wall clock for timestamps.

Every timeout, deadline and breaker wait in the core reads `monotonic()`;
`wall()` is only used to stamp results (`Score.scored_at_s`) and cache entries.
`FakeClock` lets tests drive time by hand instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clocks: `time.monotonic()` and `time.time()`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A hand-driven clock; `advance(s)` moves both clocks forward. Thread-safe."""

    __slots__ = ("_lock", "_mono_s", "_wall_s")

    def __init__(self, start_s: float = 1000.0, wall_start_s: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._mono_s = start_s
        self._wall_s = wall_start_s

    def monotonic(self) -> float:
        with self._lock:
            return self._mono_s

    def wall(self) -> float:
        with self._lock:
            return self._wall_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes back")
        with self._lock:
            self._mono_s += seconds
            self._wall_s += seconds
