"""The exactly-once feature feeds without a broker or Redis: the watermark logic over
the in-memory store (the same contract as the Redis script, see
tests/integration/test_feature_store_redis.py) and a fake topic log."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import orjson
import pytest

from scorers.clock import FakeClock
from scorers.feature_store import EVENTS_PER_RANGE, InMemoryFeatureStore
from stream_app.features.applier import ApplierConfig, Entry, OffsetApplier
from stream_app.features.events import EventFeed, decode_event
from stream_app.features.labels import decode_label_entry
from stream_app.kafka.records import SourceRecord, decode_batch
from topics.codec import encode_transaction
from topics.schemas import Transaction

TOPIC = "t.transactions"
DAY = 86_400


def tx(i: int, customer: str = "c1", terminal: str = "t1") -> Transaction:
    return Transaction(f"x{i}", 20_000 * DAY + i, customer, terminal, 10.0 + i, "EUR", "5411",
                       False, True, 100, "pos")


def log_of(txs: Sequence[Transaction], partition: int = 0,
           bad: frozenset[int] = frozenset()) -> list[SourceRecord]:
    return [SourceRecord(TOPIC, partition, i, t.transaction_id.encode(),
                         b"{broken" if i in bad else encode_transaction(t))
            for i, t in enumerate(txs)]


class FakeReader:
    def __init__(self, records: list[SourceRecord]) -> None:
        self.records = records
        self.reads: list[tuple[int, int]] = []

    def read(self, topic: str, partition: int, start: int, end: int, max_records: int,
             timeout_s: float) -> tuple[list[SourceRecord], int]:
        self.reads.append((start, end))
        got = [r for r in self.records if r.partition == partition and start <= r.offset < end]
        got = got[:max_records]
        complete = end if len(got) < max_records else got[-1].offset + 1
        return got, complete


class Counts:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], int] = {}
        self.lag: dict[int, int] = {}
        self.failures = 0
        self.caught_up = 0

    def feature_records(self, feed: str, outcome: str, n: int) -> None:
        self.records[(feed, outcome)] = self.records.get((feed, outcome), 0) + n

    def feature_catch_up(self, feed: str, n: int) -> None:
        self.caught_up += n

    def set_feature_apply_lag(self, feed: str, partition: int, records: int) -> None:
        self.lag[partition] = records

    def feature_apply_failed(self, feed: str, reason: str) -> None:
        self.failures += 1


def feed(store: InMemoryFeatureStore, log: list[SourceRecord], counts: Counts | None = None,
         **config: float) -> EventFeed:
    return EventFeed(OffsetApplier(store, FakeReader(log), decode_event, feed="transactions",
                                   config=ApplierConfig(**config), metrics=counts,  # type: ignore[arg-type]
                                   clock=FakeClock()))


def state(store: InMemoryFeatureStore) -> dict[str, dict[str, int]]:
    return store._backend._data  # type: ignore[attr-defined, no-any-return]


def expected(txs: Sequence[Transaction]) -> dict[str, dict[str, int]]:
    ref = InMemoryFeatureStore()
    ref.update(txs, 1.0)
    return state(ref)


def test_a_redelivered_batch_changes_nothing() -> None:
    txs = [tx(i) for i in range(10)]
    log = log_of(txs)
    store, counts = InMemoryFeatureStore(), Counts()
    f = feed(store, log, counts)
    f.apply_batch(decode_batch(log[:6]))
    f.apply_batch(decode_batch(log[:6]))  # redelivered (abort + rewind, rebalance)
    f.apply_batch(decode_batch(log[4:10]))  # overlapping
    assert state(store) == expected(txs)
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [10]
    assert counts.records[("transactions", "applied")] == 10
    assert counts.records[("transactions", "duplicate")] == 8


def test_a_new_owner_skips_what_its_predecessor_applied() -> None:
    txs = [tx(i) for i in range(8)]
    log = log_of(txs)
    store = InMemoryFeatureStore()
    feed(store, log).apply_batch(decode_batch(log[:5]))
    feed(store, log).apply_batch(decode_batch(log[:8]))  # rewound to an older commit
    assert state(store) == expected(txs)


def test_a_gap_is_read_back_from_the_source_before_the_batch() -> None:
    txs = [tx(i, customer=f"c{i % 3}") for i in range(20)]
    log = log_of(txs, bad=frozenset({7}))
    store, counts = InMemoryFeatureStore(), Counts()
    f = feed(store, log, counts)
    f.apply_batch(decode_batch(log[:5]))
    # batches [5, 12) committed but their update failed (or the worker died): not applied
    f.apply_batch(decode_batch(log[12:20]))
    assert f.applier.reader.reads == [(5, 12)]  # type: ignore[attr-defined]
    assert state(store) == expected([t for i, t in enumerate(txs) if i != 7])
    assert counts.caught_up == 7
    assert counts.records[("transactions", "undecodable")] == 1
    assert counts.lag[0] == 0


def test_catch_up_is_bounded_and_the_batch_waits_for_a_later_call() -> None:
    txs = [tx(i) for i in range(30)]
    log = log_of(txs)
    store, counts = InMemoryFeatureStore(), Counts()
    f = feed(store, log, counts, max_catch_up_records=10)
    f.apply_batch(decode_batch(log[:1]))
    f.apply_batch(decode_batch(log[25:30]))  # [1, 25) missing: 24 records, 10 per call
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [11]
    assert counts.lag[0] == 19
    f.catch_up({(TOPIC, 0): 30})  # idle: up to the committed offset
    f.catch_up({(TOPIC, 0): 30})
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [30]
    assert state(store) == expected(txs)


def test_a_takeover_catches_up_in_a_few_bounded_rounds_before_its_first_batch() -> None:
    txs = [tx(i, customer=f"c{i % 4}") for i in range(35)]
    log = log_of(txs)
    store = InMemoryFeatureStore()
    feed(store, log).apply_batch(decode_batch(log[:3]))  # the previous owner, then killed
    f = feed(store, log, max_catch_up_records=10)  # the new owner: committed offset 35
    assert f.catch_up({(TOPIC, 0): 35}, rounds=2) == set()  # 20 of 32 missing: not yet
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [23]
    assert f.catch_up({(TOPIC, 0): 35}, rounds=4) == {(TOPIC, 0)}
    assert f.applier.reader.reads == [(3, 35), (13, 35), (23, 35), (33, 35)]  # type: ignore[attr-defined]
    assert state(store) == expected(txs)


def test_a_failed_update_is_retried_from_kafka_after_the_back_off() -> None:
    txs = [tx(i) for i in range(12)]
    log = log_of(txs)
    store, counts = InMemoryFeatureStore(), Counts()
    f = feed(store, log, counts, retry_s=1.0)
    clock: FakeClock = f.applier.clock  # type: ignore[assignment]
    f.apply_batch(decode_batch(log[:4]))
    real = store.apply_ranges

    def down(*args: object, **kwargs: object) -> int | None:
        raise TimeoutError("redis slow")

    store.apply_ranges = down  # type: ignore[method-assign]
    f.apply_batch(decode_batch(log[4:8]))
    assert counts.failures == 1 and f.applier.in_backoff()
    store.apply_ranges = real  # type: ignore[method-assign]
    f.apply_batch(decode_batch(log[8:10]))  # still backing off: skipped, nothing kept
    clock.advance(1.5)
    f.apply_batch(decode_batch(log[10:12]))
    assert state(store) == expected(txs)
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [12]


def test_a_stale_watermark_is_refreshed_and_nothing_applies_twice() -> None:
    txs = [tx(i) for i in range(10)]
    log = log_of(txs)
    store = InMemoryFeatureStore()
    zombie, owner = feed(store, log), feed(store, log)
    zombie.apply_batch(decode_batch(log[:3]))
    owner.apply_batch(decode_batch(log[:6]))  # reads the watermark: 3
    zombie.apply_batch(decode_batch(log[3:6]))  # believes 3, finds 6: nothing twice
    zombie.apply_batch(decode_batch(log[6:10]))
    assert state(store) == expected(txs)


def test_a_batch_larger_than_one_call_is_split_in_offset_order() -> None:
    n = 2 * EVENTS_PER_RANGE + 17
    txs = [tx(i, customer=f"c{i}", terminal=f"t{i}") for i in range(n)]
    log = log_of(txs)
    store = InMemoryFeatureStore()
    feed(store, log).apply_batch(decode_batch(log))
    assert state(store) == expected(txs)
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [n]


def test_events_without_keys_move_the_watermark_only() -> None:
    txs = [tx(0), dataclasses.replace(tx(1), terminal_id=None), tx(2)]
    log = log_of(txs)
    store, counts = InMemoryFeatureStore(), Counts()
    feed(store, log, counts).apply_batch(decode_batch(log))
    assert state(store) == expected([txs[0], txs[2]])
    assert counts.records[("transactions", "unattributed")] == 1


def label(i: int, kind: str = "fraud", **extra: object) -> SourceRecord:
    body = {"transaction_id": f"x{i}", "kind": kind, "labelled_at_s": 20_010 * DAY,
            "terminal_id": "t1", "event_time_s": 20_000 * DAY + i, **extra}
    return SourceRecord("t.labels", 0, i, f"x{i}".encode(), orjson.dumps(body))


def test_labels_are_applied_once_and_bad_ones_never_stall_the_partition() -> None:
    records = [label(0), label(1, "genuine"), label(2, "chargeback"),
               SourceRecord("t.labels", 0, 3, b"x3", b"not json"),
               label(4, terminal_id=None), label(5)]
    store, counts = InMemoryFeatureStore(), Counts()
    applier = OffsetApplier(store, FakeReader(records), decode_label_entry, feed="labels",
                            metrics=counts, clock=FakeClock())  # type: ignore[arg-type]
    entries = [decode_label_entry(r) for r in records]
    assert [e.outcome for e in entries] == ["applied", "genuine", "applied", "undecodable",
                                            "unattributed", "applied"]
    assert applier.apply("t.labels", 0, entries[:3], 3)
    assert applier.apply("t.labels", 0, entries, 6)  # redelivered, then new ones
    assert applier.apply("t.labels", 0, entries[5:], 6)
    ref = InMemoryFeatureStore()
    ref.record_labels([tx(0), tx(2), tx(5)], [True, True, True], 1.0)
    assert state(store) == state(ref)
    assert counts.records[("labels", "applied")] == 3
    assert counts.records[("labels", "undecodable")] == 1
    assert counts.records[("labels", "unattributed")] == 1
    assert counts.records[("labels", "duplicate")] == 4


def test_entries_decode_like_the_worker() -> None:
    rec = log_of([tx(0)], bad=frozenset({0}))[0]
    assert decode_event(rec) == Entry(0, "undecodable")
    assert decode_event(log_of([tx(3)])[0]).outcome == "applied"


@pytest.mark.parametrize("expected_w", [None, 0])
def test_ranges_must_follow_each_other(expected_w: int | None) -> None:
    from scorers.ports import OffsetRange

    store = InMemoryFeatureStore()
    with pytest.raises(ValueError):
        store.apply_ranges("s:0", expected_w, [OffsetRange(0, 2), OffsetRange(3, 4)], 1.0)


def test_an_owner_killed_between_its_first_commit_and_apply_leaves_the_range_to_its_successor(
) -> None:
    txs = [tx(i, customer=f"c{i % 4}") for i in range(30)]
    log = log_of(txs)
    store = InMemoryFeatureStore()
    first_owner = feed(store, log)
    first_owner.claim_batch(decode_batch(log[10:20]))  # its first batch starts at offset 10
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [10]
    # ... it commits [10, 20) and is killed before applying; the group's offset is now 20
    successor = feed(store, log)
    assert successor.catch_up({(TOPIC, 0): 20}) == {(TOPIC, 0)}
    assert successor.applier.reader.reads == [(10, 20)]  # type: ignore[attr-defined]
    successor.claim_batch(decode_batch(log[20:30]))  # a watermark exists: nothing changes
    successor.apply_batch(decode_batch(log[20:30]))
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [30]
    assert state(store) == expected(txs[10:30])  # nothing before the group started


def test_without_a_claim_none_stored_reads_as_nothing_committed() -> None:
    # why the claim exists: a catch-up finds no watermark and cannot tell "never committed"
    # from "committed, never applied", so it applies nothing
    log = log_of([tx(i) for i in range(5)])
    store = InMemoryFeatureStore()
    assert feed(store, log).catch_up({(TOPIC, 0): 5}) == {(TOPIC, 0)}
    assert store.watermarks([f"{TOPIC}:0"], 1.0) == [None]


def test_a_claim_that_cannot_reach_redis_is_counted_and_the_commit_goes_on() -> None:
    store, counts = InMemoryFeatureStore(), Counts()
    f = feed(store, log_of([tx(0)]), counts)

    def down(*args: object, **kwargs: object) -> list[int | None]:
        raise ConnectionError("redis down")

    store.watermarks = down  # type: ignore[method-assign]
    f.claim_batch(decode_batch(log_of([tx(0)])))  # does not raise
    assert counts.failures == 1 and f.applier.in_backoff()
