from __future__ import annotations

import pytest

from scorers.breaker import TRANSITIONS, CircuitBreaker, IllegalTransition, State
from scorers.clock import FakeClock
from scorers.config import BreakerConfig

CFG = BreakerConfig(window_size=10, minimum_calls=4, failure_rate_threshold=0.5,
                    slow_call_rate_threshold=0.5, slow_call_duration_s=0.1,
                    half_open_trial_calls=2, open_wait_s=1.0, open_wait_multiplier=2.0,
                    max_open_wait_s=3.0)


def make(cfg: BreakerConfig = CFG) -> tuple[CircuitBreaker, FakeClock, list[tuple[str, str, str]]]:
    clock = FakeClock()
    seen: list[tuple[str, str, str]] = []
    return CircuitBreaker("dep", cfg, clock, lambda *t: seen.append(t)), clock, seen


def fail(b: CircuitBreaker, n: int, duration_s: float = 0.0) -> None:
    for _ in range(n):
        assert b.acquire()
        b.on_failure(duration_s)


def test_stays_closed_below_minimum_calls_then_opens_on_failure_rate() -> None:
    b, _, seen = make()
    fail(b, 3)
    assert b.state is State.CLOSED
    fail(b, 1)
    assert b.state is State.OPEN and not b.acquire()
    assert seen == [("dep", "closed", "open")]


def test_successes_keep_failure_rate_under_threshold() -> None:
    b, _, _ = make()
    for i in range(20):
        assert b.acquire()
        (b.on_failure if i % 4 == 0 else b.on_success)(0.0)
    assert b.state is State.CLOSED


def test_slow_calls_open_the_breaker() -> None:
    b, _, _ = make()
    for _ in range(4):
        assert b.acquire()
        b.on_success(0.2)
    assert b.state is State.OPEN


def test_half_open_trials_close_or_reopen_with_backoff_up_to_cap() -> None:
    b, clock, seen = make()
    fail(b, 4)
    waits = []
    for _ in range(3):
        until = b.open_until_s()
        assert until is not None
        waits.append(until - clock.monotonic())
        clock.advance(waits[-1])
        assert b.acquire() and b.state is State.HALF_OPEN
        assert b.acquire() and not b.acquire()  # two trial permits only
        b.on_failure(0.0)
        b.on_failure(0.0)
        assert b.state is State.OPEN
    assert waits == [1.0, 2.0, 3.0]
    clock.advance(3.0)
    assert b.acquire() and b.acquire()
    b.on_success(0.0)
    b.on_success(0.0)
    assert b.state is State.CLOSED
    assert ("dep", "half_open", "closed") in seen
    fail(b, 4)  # backoff was reset by closing
    assert b.open_until_s() == pytest.approx(clock.monotonic() + 1.0)


def test_release_returns_a_trial_permit_without_a_verdict() -> None:
    b, clock, _ = make()
    fail(b, 4)
    clock.advance(1.0)
    assert b.acquire() and b.acquire()
    b.release()
    assert b.acquire()
    assert b.state is State.HALF_OPEN


def test_bad_input_released_does_not_count() -> None:
    b, _, _ = make()
    for _ in range(10):
        assert b.acquire()
        b.release()
    assert b.state is State.CLOSED


def test_forced_open_and_disabled_overrides() -> None:
    b, _, seen = make()
    b.force_open("integrity: checksum")
    assert b.state is State.FORCED_OPEN and not b.acquire() and b.reason.startswith("integrity")
    b.disable()
    fail(b, 10)
    assert b.state is State.DISABLED and b.acquire()
    b.reset()
    assert b.state is State.CLOSED
    assert [s[1:] for s in seen] == [("closed", "forced_open"), ("forced_open", "disabled"),
                                     ("disabled", "closed")]


def test_transition_table_is_enforced() -> None:
    assert State.HALF_OPEN not in TRANSITIONS[State.CLOSED]
    b, _, _ = make()
    with pytest.raises(IllegalTransition):
        b._goto(State.HALF_OPEN)


def test_time_window_forgets_old_failures() -> None:
    cfg = BreakerConfig(window_type="time", window_size=2, minimum_calls=4,
                        failure_rate_threshold=0.5)
    b, clock, _ = make(cfg)
    fail(b, 3)
    clock.advance(5.0)
    fail(b, 1)
    assert b.state is State.CLOSED
    fail(b, 3)
    assert b.state is State.OPEN


def test_hook_errors_do_not_break_the_breaker() -> None:
    def boom(*_: str) -> None:
        raise RuntimeError("listener bug")

    b = CircuitBreaker("dep", CFG, FakeClock(), boom)
    fail(b, 4)
    assert b.state is State.OPEN


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_rate_threshold=0.0)
    with pytest.raises(ValueError):
        BreakerConfig(open_wait_s=5.0, max_open_wait_s=1.0)
