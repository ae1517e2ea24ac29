from __future__ import annotations

import pytest

from scorers.clock import FakeClock, SystemClock
from scorers.deadline import Deadline


def test_fake_clock_moves_both_clocks_forward_only() -> None:
    clock = FakeClock(start_s=5.0, wall_start_s=100.0)
    clock.advance(1.5)
    assert (clock.monotonic(), clock.wall()) == (6.5, 101.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_system_clock_is_monotonic() -> None:
    clock = SystemClock()
    a = clock.monotonic()
    assert clock.monotonic() >= a and clock.wall() > 1e9


def test_deadline_remaining_and_expired() -> None:
    clock = FakeClock()
    d = Deadline.after(clock, 0.05)
    assert d.remaining() == pytest.approx(0.05) and not d.expired()
    clock.advance(0.03)
    assert d.remaining() == pytest.approx(0.02)
    clock.advance(0.03)
    assert d.remaining() == 0.0 and d.expired()


def test_reserve_never_extends_the_deadline() -> None:
    clock = FakeClock()
    d = Deadline.after(clock, 0.05)
    assert d.reserve(0.02).remaining() == pytest.approx(0.03)
    assert Deadline.after(clock, -1).expired()
