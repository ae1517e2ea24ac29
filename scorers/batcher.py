"""`MicroBatcher`: a pure, clock-driven accumulator for the worker's poll loop.

The window opens at the first record. A batch closes on size, on linger time
since its first record, or early enough that the earliest record can still
meet its deadline given the measured inference time (EWMA). The number of
batches handed out and not yet `complete`d is capped; `complete` checks that a
batch got exactly one result per record. No threads, no sleeping: the caller
passes `now` (monotonic seconds) and asks `time_until_ready(now)` how long it
may block in its own poll.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from scorers.listeners import BatchCloseReason

T = TypeVar("T")
R = TypeVar("R")


class ResultCountMismatch(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    seq: int
    items: tuple[T, ...]
    reason: BatchCloseReason
    formed_at_s: float
    deadline_at_s: float  # the earliest record's deadline (monotonic)
    first_added_at_s: float = 0.0  # when the batch's earliest record was added (monotonic)

    def __len__(self) -> int:
        return len(self.items)


class MicroBatcher(Generic[T]):
    def __init__(self, max_size: int, linger_s: float, deadline_s: float, *,
                 max_in_flight: int = 2, max_pending: int | None = None,
                 initial_inference_s: float = 0.0, ewma_alpha: float = 0.2,
                 margin_s: float = 0.001) -> None:
        if max_size < 1 or max_in_flight < 1 or linger_s < 0 or deadline_s <= 0:
            raise ValueError("need max_size >= 1, max_in_flight >= 1, linger_s >= 0, deadline_s > 0")
        if not 0 < ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        self.max_size = max_size
        self.linger_s = linger_s
        self.deadline_s = deadline_s
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending if max_pending is not None else max_size * (max_in_flight + 1)
        self.margin_s = margin_s
        self._alpha = ewma_alpha
        self._inference_s = initial_inference_s
        self._pending: deque[tuple[T, float, float]] = deque()  # item, added_at, deadline_at
        self._in_flight: set[int] = set()
        self._seq = 0

    # -- input ---------------------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        return len(self._pending) < self.max_pending

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def inference_estimate_s(self) -> float:
        return self._inference_s

    def add(self, item: T, now: float, deadline_s: float | None = None) -> None:
        """Queue one record; its deadline is `now + deadline_s` (default: the batcher's)."""
        if not self.accepting:
            raise OverflowError(f"batcher full: {len(self._pending)} records pending")
        budget_s = self.deadline_s if deadline_s is None else deadline_s
        self._pending.append((item, now, now + budget_s))

    def retain(self, keep: Callable[[T], bool]) -> int:
        """Drop the pending records `keep` rejects (e.g. of revoked partitions); the
        kept ones keep their place, arrival time and deadline. Returns how many went."""
        before = len(self._pending)
        self._pending = deque(entry for entry in self._pending if keep(entry[0]))
        return before - len(self._pending)

    def record_inference(self, seconds: float) -> None:
        """Fold one measured batch scoring time into the EWMA estimate."""
        if seconds >= 0:
            self._inference_s += self._alpha * (seconds - self._inference_s)

    # -- output --------------------------------------------------------------------------------
    def _close_reason(self, now: float) -> BatchCloseReason | None:
        if not self._pending:
            return None
        if len(self._pending) >= self.max_size:
            return "size"
        window = list(self._pending)[: self.max_size]
        if self._latest_start(window) <= now:
            return "deadline"
        if now - window[0][1] >= self.linger_s:
            return "linger"
        return None

    def _latest_start(self, window: Sequence[tuple[T, float, float]]) -> float:
        earliest = min(deadline for _, _, deadline in window)
        return earliest - self._inference_s - self.margin_s

    def poll_ready(self, now: float) -> Batch[T] | None:
        """The next batch if one should close now and the in-flight cap allows it."""
        if len(self._in_flight) >= self.max_in_flight:
            return None
        reason = self._close_reason(now)
        return self._take(now, reason) if reason else None

    def time_until_ready(self, now: float) -> float | None:
        """Seconds until `poll_ready` would return a batch; None if waiting alone won't do it
        (nothing pending, or the in-flight cap is reached)."""
        if not self._pending or len(self._in_flight) >= self.max_in_flight:
            return None
        if self._close_reason(now):
            return 0.0
        window = list(self._pending)[: self.max_size]
        linger_at = window[0][1] + self.linger_s
        return max(0.0, min(linger_at, self._latest_start(window)) - now)

    def flush(self, now: float) -> list[Batch[T]]:
        """Everything pending, in batches of at most max_size (shutdown, rebalance).
        Ignores the in-flight cap: the caller is draining."""
        batches: list[Batch[T]] = []
        while self._pending:
            batches.append(self._take(now, "flush"))
        return batches

    def complete(self, batch: Batch[T], results: Sequence[R]) -> list[tuple[T, R]]:
        """Release the batch's in-flight slot and pair each record with its result."""
        if batch.seq not in self._in_flight:
            raise KeyError(f"batch {batch.seq} is not in flight")
        self._in_flight.discard(batch.seq)
        if len(results) != len(batch.items):
            raise ResultCountMismatch(
                f"batch {batch.seq}: {len(batch.items)} records, {len(results)} results")
        return list(zip(batch.items, results, strict=True))

    def abandon(self, batch: Batch[T]) -> None:
        """Release the slot of a batch that will not be completed (e.g. rewound)."""
        self._in_flight.discard(batch.seq)

    def _take(self, now: float, reason: BatchCloseReason) -> Batch[T]:
        n = min(self.max_size, len(self._pending))
        taken = [self._pending.popleft() for _ in range(n)]
        self._seq += 1
        self._in_flight.add(self._seq)
        return Batch(seq=self._seq, items=tuple(item for item, _, _ in taken), reason=reason,
                     formed_at_s=now, deadline_at_s=min(d for _, _, d in taken),
                     first_added_at_s=min(a for _, a, _ in taken))
