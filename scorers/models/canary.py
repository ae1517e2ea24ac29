"""Canary by key: which records go to the candidate model, and when to give up on it.

Routing is by a stable hash of one entity field (`customer_id` by default): the
first 8 bytes of blake2b of the key, as a fraction of 2**64, below the canary's
`fraction` → candidate. The same customer always lands on the same side, in every
worker and every process (never Python's salted `hash()`); growing the fraction only
adds customers. A record whose key is missing stays with the champion.

`RollbackRule` watches a sliding window (`window_s`, on the injected monotonic clock)
of per-batch counts for the champion and the candidate, and trips once the candidate
has at least `min_records` routed rows in the window and either
- its error rate (rows it failed: exception, timeout, NaN, low confidence) exceeds
  `max_error_rate`, or
- its review rate exceeds the champion's by more than `max_review_rate_delta`
  (compared only once the champion has `min_records` answered rows too).
The verdict names the reason (`error_rate` / `review_rate`) and the numbers.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from topics.schemas import Transaction

DEFAULT_KEY: Final = "customer_id"
ROUTING_KEYS: Final = frozenset({"customer_id", "terminal_id"})
_SPAN: Final = float(1 << 64)


def stable_bucket(key: str) -> float:
    """A value in [0, 1) fixed by `key` alone (blake2b, 8 bytes)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SPAN


def routing_key(tx: Transaction, key: str) -> str | None:
    value = getattr(tx, key, None)
    return value if isinstance(value, str) and value else None


def on_candidate(tx: Transaction, key: str, fraction: float) -> bool:
    k = routing_key(tx, key)
    return k is not None and stable_bucket(k) < fraction


@dataclass(frozen=True, slots=True)
class RollbackBounds:
    min_records: int = 200  # candidate rows in the window before the rule may trip
    max_error_rate: float = 0.05  # candidate rows failed / routed
    max_review_rate_delta: float = 0.05  # candidate review rate minus the champion's
    window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.min_records < 1 or self.window_s <= 0:
            raise ValueError("min_records must be >= 1 and window_s > 0")
        if not 0.0 <= self.max_error_rate <= 1.0 or not 0.0 <= self.max_review_rate_delta <= 1.0:
            raise ValueError("rates must be within [0, 1]")


@dataclass(slots=True)
class Counts:
    """Rows of one model version: routed to it, answered, answered with review, failed."""

    routed: int = 0
    answered: int = 0
    review: int = 0
    failed: int = 0

    def add(self, other: Counts) -> None:
        self.routed += other.routed
        self.answered += other.answered
        self.review += other.review
        self.failed += other.failed

    @property
    def review_rate(self) -> float:
        return self.review / self.answered if self.answered else 0.0

    @property
    def error_rate(self) -> float:
        return self.failed / self.routed if self.routed else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    trip: bool
    reason: str = ""  # "error_rate" | "review_rate" when tripped
    detail: str = ""


@dataclass(slots=True)
class RollbackRule:
    bounds: RollbackBounds
    _window: deque[tuple[float, Counts, Counts]] = field(default_factory=deque)

    def observe(self, now_s: float, champion: Counts, candidate: Counts) -> None:
        """One batch's counts (at monotonic `now_s`)."""
        if champion.routed or candidate.routed:
            self._window.append((now_s, champion, candidate))

    def totals(self, now_s: float) -> tuple[Counts, Counts]:
        while self._window and self._window[0][0] < now_s - self.bounds.window_s:
            self._window.popleft()
        champ, cand = Counts(), Counts()
        for _t, a, b in self._window:
            champ.add(a)
            cand.add(b)
        return champ, cand

    def evaluate(self, now_s: float) -> Verdict:
        b = self.bounds
        champ, cand = self.totals(now_s)
        if cand.routed < b.min_records:
            return Verdict(False)
        if cand.error_rate > b.max_error_rate:
            return Verdict(True, "error_rate",
                           f"candidate error rate {cand.error_rate:.4f} > {b.max_error_rate} "
                           f"({cand.failed}/{cand.routed} rows in {b.window_s:g}s)")
        if champ.answered >= b.min_records and cand.answered \
                and cand.review_rate - champ.review_rate > b.max_review_rate_delta:
            return Verdict(True, "review_rate",
                           f"candidate review rate {cand.review_rate:.4f} vs champion "
                           f"{champ.review_rate:.4f}: delta > {b.max_review_rate_delta}")
        return Verdict(False)

    def reset(self) -> None:
        self._window.clear()
