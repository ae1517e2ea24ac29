"""Applying one Kafka topic's records to the feature store exactly once.

The store keeps, per source partition, a watermark: the next offset to apply
(`scorers.feature_store`, "Applying a partition exactly once"; why offsets and not
transaction ids is written there). `OffsetApplier.apply(topic, partition, entries,
end)` takes what a committed batch covers, [first entry's offset, end), and:

1. reads the watermark W (cached after the first read or write; a mismatch at
   write time refreshes it);
2. drops entries below W (`duplicate`: redelivered, rewound, re-read);
3. if W lies before the first entry, the records [W, first) were committed but
   never applied (a failed update, a worker killed after its commit, a new owner
   after a rebalance): they are read back from Kafka (`RangeReader`, at most
   `max_catch_up_records` and `catch_up_timeout_s` per call) and applied first;
   if the read does not reach the batch, only what was read is applied and the
   batch waits for a later call (late, never lost, nothing held in memory);
4. splits what is planned into ranges in offset order, each within one bounded
   script call (`EVENTS_PER_RANGE` events, `FRAUDS_PER_RANGE` frauds), and sends them
   in one round trip; each moves the watermark only over what it applied.

A failure (Redis slow or down, a read error) is logged and counted, the cached
watermark is forgotten (a timed-out call may have applied) and the applier backs
off (`retry_s`, doubling to `max_retry_s`); calls during the back-off return at
once. The gap is exported per partition (`lag`: end - watermark).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import structlog

from scorers.clock import Clock, SystemClock
from scorers.feature_store import EVENTS_PER_RANGE, FRAUDS_PER_RANGE
from scorers.ports import AppliedFeatureStore, OffsetRange
from stream_app.kafka.records import SourceRecord
from topics.schemas import Transaction

log = structlog.get_logger(__name__)

Fraud = tuple[str, float]  # (terminal id, event time) of a fraud label


class Entry(NamedTuple):
    """One record of a source partition as the feature store sees it."""

    offset: int
    outcome: str  # "applied" when it adds something, else why not (a metric label)
    event: Transaction | None = None
    fraud: Fraud | None = None


Decode = Callable[[SourceRecord], Entry]


class RangeReader(Protocol):
    def read(self, topic: str, partition: int, start: int, end: int, max_records: int,
             timeout_s: float) -> tuple[list[SourceRecord], int]:
        """Committed records of [start, end) in offset order, at most `max_records`, and
        the offset up to which that list is complete (`end` when all were read)."""
        ...


@runtime_checkable
class FeedMetrics(Protocol):
    """What a feed reports; `stream_app.metrics.Metrics` implements it."""

    def feature_records(self, feed: str, outcome: str, n: int) -> None: ...
    def feature_catch_up(self, feed: str, n: int) -> None: ...
    def set_feature_apply_lag(self, feed: str, partition: int, records: int) -> None: ...
    def feature_apply_failed(self, feed: str, reason: str) -> None: ...


class NoFeedMetrics:
    def feature_records(self, feed: str, outcome: str, n: int) -> None:
        pass

    def feature_catch_up(self, feed: str, n: int) -> None:
        pass

    def set_feature_apply_lag(self, feed: str, partition: int, records: int) -> None:
        pass

    def feature_apply_failed(self, feed: str, reason: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ApplierConfig:
    timeout_s: float = 0.2  # one store round trip
    max_catch_up_records: int = 5000  # per call: a long outage never stalls scoring
    catch_up_timeout_s: float = 0.5
    retry_s: float = 0.5
    max_retry_s: float = 8.0


def failure_reason(exc: BaseException) -> str:
    """A bounded metric label for a failed update."""
    name = type(exc).__name__.lower()
    if "timeout" in name:
        return "timeout"
    if "connection" in name:
        return "connection"
    return "error"


class OffsetApplier:
    """The watermark logic for one feed (one topic); see the module docstring."""

    def __init__(self, store: AppliedFeatureStore, reader: RangeReader | None, decode: Decode,
                 *, feed: str, config: ApplierConfig | None = None,
                 metrics: FeedMetrics | None = None, clock: Clock | None = None) -> None:
        self.store = store
        self.reader = reader
        self.decode = decode
        self.feed = feed
        self.config = config or ApplierConfig()
        self.metrics: FeedMetrics = metrics or NoFeedMetrics()
        self.clock = clock or SystemClock()
        self._watermark: dict[tuple[str, int], int | None] = {}
        self._lag: dict[tuple[str, int], int] = {}
        self._retry_at = float("-inf")
        self._backoff_s = self.config.retry_s

    # -- state -------------------------------------------------------------------------------
    def in_backoff(self) -> bool:
        return self.clock.monotonic() < self._retry_at

    def lag(self, topic: str, partition: int) -> int | None:
        return self._lag.get((topic, partition))

    def watermark(self, topic: str, partition: int) -> int | None:
        """The watermark as last seen (None: unknown or none stored)."""
        return self._watermark.get((topic, partition))

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop what is cached for partitions this process no longer owns."""
        for tp in partitions:
            self._watermark.pop(tp, None)
            if self._lag.pop(tp, None) is not None:
                self.metrics.set_feature_apply_lag(self.feed, tp[1], 0)

    # -- applying ------------------------------------------------------------------------------
    def apply(self, topic: str, partition: int, entries: Sequence[Entry], end: int) -> bool:
        """Apply `entries` (offset order, every record of [entries[0].offset, end)), after
        the missing range before them. True when the watermark reached `end`."""
        if self.in_backoff():
            self._report_lag(topic, partition, end)
            return False
        try:
            done = self._apply(topic, partition, entries, end)
        except Exception as exc:  # noqa: BLE001 - a failed update is retried from Kafka later
            self._failed(topic, partition, exc)
            done = False
        else:
            self._backoff_s = self.config.retry_s
        self._report_lag(topic, partition, end)
        return done

    def claim(self, topic: str, partition: int, first: int) -> None:
        """Before the first commit that covers `partition`: if no watermark is stored for
        it, store `first` (the batch's first offset there) as the watermark, atomically
        and only if still none (an empty range from "none"). Without it, an owner killed
        between its first commit and its first apply left no watermark, and its successor
        took "none stored" for "nothing ever committed": the committed range was never
        applied. A failure is counted and backs off like an apply; the commit goes on."""
        key = (topic, partition)
        if self._watermark.get(key) is not None or self.in_backoff():
            return
        source = f"{topic}:{partition}"
        try:
            if key not in self._watermark:
                [self._watermark[key]] = self.store.watermarks([source], self.config.timeout_s)
            if self._watermark[key] is None:
                self._watermark[key] = self.store.apply_ranges(
                    source, None, [OffsetRange(first, first, (), ())], self.config.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the commit must not wait for Redis
            self._failed(topic, partition, exc)

    def catch_up(self, topic: str, partition: int, end: int) -> bool:
        """Apply what is missing below `end` (all of it committed), with no new batch."""
        return self.apply(topic, partition, (), end)

    def _apply(self, topic: str, partition: int, entries: Sequence[Entry], end: int) -> bool:
        key = (topic, partition)
        source = f"{topic}:{partition}"
        for _ in range(3):  # a concurrent writer moved the watermark: plan again
            if key not in self._watermark:
                [self._watermark[key]] = self.store.watermarks([source], self.config.timeout_s)
            start = self._watermark[key]
            first = entries[0].offset if entries else end
            if start is None:
                if not entries:
                    return True  # nothing ever applied here: the first batch starts it
                start = first
            if start >= end:
                self._count_duplicates(entries)
                return True
            todo = [e for e in entries if e.offset >= start]
            self._count_duplicates(entries[:len(entries) - len(todo)])
            cover_end = end
            if start < first:
                missing, complete = self._read_missing(topic, partition, start, first)
                if complete < first:  # the batch waits until the gap is filled
                    todo, cover_end = [], complete
                todo = missing + todo
            ranges = _ranges(start, cover_end, todo)
            expected = self._watermark[key]
            stored = self.store.apply_ranges(source, expected, ranges, self.config.timeout_s)
            self._watermark[key] = stored
            if stored in {r.end for r in ranges}:  # else another writer moved it first
                self._count([e for e in todo if stored is not None and e.offset < stored])
            if stored == cover_end:
                return cover_end >= end
        return False

    def _read_missing(self, topic: str, partition: int, start: int,
                      first: int) -> tuple[list[Entry], int]:
        if self.reader is None:
            raise RuntimeError(f"{topic}:{partition} is missing [{start}, {first}) and no "
                               "reader was given")
        records, complete = self.reader.read(topic, partition, start, first,
                                             self.config.max_catch_up_records,
                                             self.config.catch_up_timeout_s)
        entries = [self.decode(r) for r in records if start <= r.offset < complete]
        if entries:
            self.metrics.feature_catch_up(self.feed, len(entries))
            log.info("feature_catch_up", feed=self.feed, partition=partition, start=start,
                     end=first, records=len(entries), complete_to=complete)
        return entries, complete

    # -- accounting -------------------------------------------------------------------------
    def _count(self, entries: Sequence[Entry]) -> None:
        counts: dict[str, int] = {}
        for e in entries:
            counts[e.outcome] = counts.get(e.outcome, 0) + 1
        for outcome, n in counts.items():
            self.metrics.feature_records(self.feed, outcome, n)

    def _count_duplicates(self, entries: Sequence[Entry]) -> None:
        if entries:
            self.metrics.feature_records(self.feed, "duplicate", len(entries))

    def _failed(self, topic: str, partition: int, exc: BaseException) -> None:
        self._watermark.pop((topic, partition), None)  # a timed-out call may have applied
        self._retry_at = self.clock.monotonic() + self._backoff_s
        log.warning("feature_apply_failed", feed=self.feed, partition=partition,
                    error=repr(exc), retry_in_s=self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, self.config.max_retry_s)
        self.metrics.feature_apply_failed(self.feed, failure_reason(exc))

    def _report_lag(self, topic: str, partition: int, end: int) -> None:
        w = self._watermark.get((topic, partition))
        if w is None and (topic, partition) not in self._lag:
            return
        lag = max(0, end - w) if w is not None else self._lag[(topic, partition)]
        self._lag[(topic, partition)] = lag
        self.metrics.set_feature_apply_lag(self.feed, partition, lag)


def _ranges(start: int, end: int, entries: Sequence[Entry]) -> list[OffsetRange]:
    """[start, end) as consecutive ranges, each within one bounded call; entries in
    offset order within [start, end)."""
    out: list[OffsetRange] = []
    lo = start
    events: list[Transaction] = []
    frauds: list[Fraud] = []
    for e in entries:
        if (e.event is not None and len(events) == EVENTS_PER_RANGE) or (
                e.fraud is not None and len(frauds) == FRAUDS_PER_RANGE):
            out.append(OffsetRange(lo, e.offset, tuple(events), tuple(frauds)))
            lo, events, frauds = e.offset, [], []
        if e.event is not None:
            events.append(e.event)
        if e.fraud is not None:
            frauds.append(e.fraud)
    if end > lo or not out:
        out.append(OffsetRange(lo, end, tuple(events), tuple(frauds)))
    return out
