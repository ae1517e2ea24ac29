"""`Deadline`: an absolute point on the injected monotonic clock.

A batch gets one deadline when it is formed; every stage of the ladder asks
`remaining()` and gets only the budget that is left, never a fresh timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from scorers.clock import Clock


@dataclass(frozen=True, slots=True)
class Deadline:
    clock: Clock
    expires_at_s: float

    @classmethod
    def after(cls, clock: Clock, budget_s: float) -> Deadline:
        return cls(clock, clock.monotonic() + max(0.0, budget_s))

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at_s - self.clock.monotonic())

    def expired(self) -> bool:
        return self.clock.monotonic() >= self.expires_at_s

    def reserve(self, reserve_s: float) -> Deadline:
        """This deadline moved `reserve_s` earlier: leaves time for later stages."""
        return Deadline(self.clock, self.expires_at_s - max(0.0, reserve_s))
