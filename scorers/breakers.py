"""The breaker registry and the one way to call a dependency through its breaker.

`Breakers` creates one `CircuitBreaker` per named config, once, with the clock
and the listener's transition hook. Every call through a breaker goes
`acquire(name)` → `Permit.run(timeout_s, fn, judge)` (or `Permit.release()` when
the call is not made). `run` judges the same way everywhere:

- an exception is a failure;
- without a `judge`, a call that returns after its timeout is a failure (slow and
  late) and its result is discarded;
- with a `judge`, the judge's verdict stands: "success", "failure", or "none"
  (the permit is handed back without a verdict: bad input is the caller's fault).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from scorers.breaker import CircuitBreaker, TransitionHook
from scorers.clock import Clock
from scorers.config import DEFAULT_BREAKERS, BreakerConfig

R = TypeVar("R")
Verdict = Literal["success", "failure", "none"]


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """What one guarded call gave: the value when `ok`, else why not."""

    ok: bool
    value: R | None
    reason: str  # "", "breaker_open", "no_budget", "timeout", "exception"
    elapsed_s: float = 0.0


class Permit:
    """Permission for one call; finish it with `run` or `release`, exactly once."""

    __slots__ = ("_breaker", "_clock")

    def __init__(self, breaker: CircuitBreaker, clock: Clock) -> None:
        self._breaker, self._clock = breaker, clock

    def release(self) -> None:
        self._breaker.release()

    def run(self, timeout_s: float, fn: Callable[[float], R],
            judge: Callable[[R], Verdict] | None = None) -> Call[R]:
        if timeout_s <= 0:
            self._breaker.release()
            return Call(False, None, "no_budget")
        t0 = self._clock.monotonic()
        try:
            value = fn(timeout_s)
        except Exception:  # noqa: BLE001 - a dependency fault is reported, never raised
            elapsed = self._clock.monotonic() - t0
            self._breaker.on_failure(elapsed)
            return Call(False, None, "exception", elapsed)
        elapsed = self._clock.monotonic() - t0
        if judge is None:
            late = elapsed > timeout_s
            (self._breaker.on_failure if late else self._breaker.on_success)(elapsed)
            return Call(False, None, "timeout", elapsed) if late else Call(True, value, "", elapsed)
        verdict = judge(value)
        if verdict == "success":
            self._breaker.on_success(elapsed)
        elif verdict == "failure":
            self._breaker.on_failure(elapsed)
        else:
            self._breaker.release()
        return Call(True, value, "", elapsed)


class Breakers:
    """name → `CircuitBreaker`, created once from named configs."""

    def __init__(self, configs: Mapping[str, BreakerConfig], clock: Clock,
                 on_transition: TransitionHook | None = None) -> None:
        self._clock = clock
        self._by_name = {name: CircuitBreaker(name, config, clock, on_transition)
                         for name, config in configs.items()}

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self._by_name[name]

    def get(self, name: str) -> CircuitBreaker | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def items(self) -> list[tuple[str, CircuitBreaker]]:
        return list(self._by_name.items())

    def acquire(self, name: str) -> Permit | None:
        breaker = self._by_name[name]
        return Permit(breaker, self._clock) if breaker.acquire() else None

    def call(self, name: str, timeout_s: float, fn: Callable[[float], R],
             judge: Callable[[R], Verdict] | None = None) -> Call[R]:
        """acquire + run: the common case."""
        if timeout_s <= 0:
            return Call(False, None, "no_budget")
        permit = self.acquire(name)
        if permit is None:
            return Call(False, None, "breaker_open")
        return permit.run(timeout_s, fn, judge)


def breaker_configs(overrides: Mapping[str, BreakerConfig] | None = None,
                    names: tuple[str, ...] = ()) -> dict[str, BreakerConfig]:
    """The built-in configs, plus `BreakerConfig()` for `names` not built in, with
    `overrides` on top."""
    out = dict(DEFAULT_BREAKERS)
    for name in names:
        out.setdefault(name, BreakerConfig())
    out.update(overrides or {})
    return out
